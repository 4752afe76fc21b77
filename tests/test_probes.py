"""Classification protocols of DINOv2-radiology (papers/004): kNN, linear probing, view choice, metrics,
slice averaging (common/evaluation/probes.py) and few-shot linear probing (common/evaluation/fewshot.py)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from common.evaluation.fewshot import class_subjects, fewshot_splits, run_fewshot_linear
from common.evaluation.probes import (
    accuracy,
    auroc,
    choose_view,
    extract_features,
    knn_predict,
    linear_probe,
    mean_auroc,
)
from common.networks.classifier import slice_average_embedding

FAST = {"lrs": (0.1,), "weight_decays": (0.0,), "epochs": 50}


def knn_reference(train, labels, test, k, temperature, num_classes=None):
    """Weighted kNN written out with Python loops: cosine similarity, top k, exp(s / T) votes."""
    rows = []
    for q in test.tolist():
        sims = []
        for j, t in enumerate(train.tolist()):
            dot = sum(a * b for a, b in zip(q, t, strict=True))
            norms = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norms, j))
        top = sorted(sims, reverse=True)[:k]
        if labels.ndim == 1:
            scores = [0.0] * num_classes
            for s, j in top:
                scores[int(labels[j])] += math.exp(s / temperature)
        else:
            total = sum(math.exp(s / temperature) for s, _ in top)
            scores = [
                sum(math.exp(s / temperature) * float(labels[j, c]) for s, j in top) / total
                for c in range(labels.shape[1])
            ]
        rows.append(scores)
    return torch.tensor(rows)


def pairs_auroc(scores, labels):
    """AUROC by counting (positive, negative) pairs: wins count 1, ties 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_knn_multiclass_equals_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(30, 6, generator=g), torch.randn(7, 6, generator=g)
    labels = torch.randint(0, 4, (30,), generator=g)
    scores = knn_predict(train, labels, test, k=5, temperature=0.07, num_classes=5)
    assert scores.shape == (7, 5)
    assert torch.allclose(scores, knn_reference(train, labels, test, 5, 0.07, 5).float(), rtol=1e-5)
    assert torch.equal(knn_predict(train, labels, test, k=5, chunk=3), scores[:, :4])  # chunking, default C


def test_knn_multilabel_equals_the_loop_reference():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(25, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.randint(0, 2, (25, 3), generator=g)
    scores = knn_predict(train, labels, test, k=4, temperature=0.1, multilabel="weighted")
    assert torch.allclose(scores, knn_reference(train, labels, test, 4, 0.1).float(), rtol=1e-5)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_knn_hand_worked_four_points():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[4.0, 2.0]])  # direction (2, 1) / sqrt(5): similarities 2, 1, -2, -1 over sqrt(5)
    r5 = math.sqrt(5)
    two = knn_predict(train, labels, query, k=2, temperature=0.5, num_classes=3)
    assert torch.allclose(two, torch.tensor([[math.exp(4 / r5), math.exp(2 / r5), 0.0]]))
    three = knn_predict(train, labels, query, k=3, temperature=0.5)
    assert torch.allclose(three, torch.tensor([[math.exp(4 / r5) + math.exp(-2 / r5), math.exp(2 / r5)]]))
    multi = knn_predict(
        train,
        torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]]),
        query,
        k=2,
        temperature=0.5,
        multilabel="weighted",
    )
    w0, w1 = math.exp(4 / r5), math.exp(2 / r5)
    assert torch.allclose(multi, torch.tensor([[1.0, w1 / (w0 + w1)]]))


def test_knn_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        knn_predict(x, torch.tensor([0, 1, 0, 1]), x, k=5)
    with pytest.raises(ValueError, match="3 train labels for 4"):
        knn_predict(x, torch.tensor([0, 1, 0]), x, k=1)
    with pytest.raises(ValueError, match="equal D"):
        knn_predict(x, torch.tensor([0, 1, 0, 1]), torch.randn(2, 5), k=1)
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        knn_predict(x, torch.tensor([0, 1, 2, 1]), x, k=1, num_classes=2)


def test_auroc_hand_cases_and_pair_count():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # 3 of 4 pairs won
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875  # 3 wins and one tie of 4 pairs
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=g)
    assert auroc(scores, labels) == pytest.approx(pairs_auroc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        auroc([0.1, 0.2, 0.3], [0, 1])


def test_mean_auroc_skips_and_reports_single_valued_classes():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.6, 0.2], [0.1, 0.3, 0.4]])
    multilabel = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    summary = mean_auroc(scores, multilabel)
    assert summary.per_class == {0: 1.0, 1: 1.0} and summary.skipped == (2,) and summary.mean == 1.0
    multiclass = torch.tensor([0, 1, 0, 1])  # one-vs-rest; class 2 absent
    summary = mean_auroc(scores, multiclass)
    expected = {c: pairs_auroc(scores[:, c].tolist(), (multiclass == c).long().tolist()) for c in (0, 1)}
    assert summary.per_class == pytest.approx(expected) and summary.skipped == (2,)
    assert summary.mean == pytest.approx(sum(expected.values()) / 2)
    with pytest.raises(ValueError, match="no class has both"):
        mean_auroc(scores, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        mean_auroc(scores, torch.tensor([0, 1, 3, 1]))


def test_accuracy_hand_case():
    scores = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    assert accuracy(scores, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="labels"):
        accuracy(scores, torch.ones(4, 2))


def blobs(n, seed, separation=6.0, dim=8, classes=2, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.eye(classes, dim) * separation
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels


def test_linear_probe_separates_separable_sets():
    (x, y), (vx, vy), (tx, ty) = blobs(40, 0), blobs(20, 1), blobs(20, 2)
    probe = linear_probe(x, y, vx, vy, **FAST)
    assert mean_auroc(probe.predict_scores(tx), ty).mean == 1.0
    assert accuracy(probe.predict_scores(tx), ty) == 1.0
    assert torch.allclose(probe.predict_scores(tx).sum(1), torch.ones(20))
    # multi-label: class c is present when feature c is positive, with a margin
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(90, 5, generator=g)
    feats[:, :3] += 1.5 * torch.sign(feats[:, :3])
    labels = (feats[:, :3] > 0).long()
    probe = linear_probe(feats[:50], labels[:50], feats[50:70], labels[50:70], **FAST)
    assert probe.multilabel and probe.predict_scores(feats[70:]).shape == (20, 3)
    assert mean_auroc(probe.predict_scores(feats[70:]), labels[70:]).mean == 1.0


def test_linear_probe_chooses_hyper_parameters_on_validation_only():
    (x, y), (vx, vy) = blobs(30, 4, separation=1.0, noise=1.5), blobs(30, 5, separation=1.0, noise=1.5)
    grid = {"lrs": (1e-4, 3e-3, 0.3), "weight_decays": (0.0, 0.5), "epochs": 15}
    probe = linear_probe(x, y, vx, vy, **grid)
    scores = {}
    for lr in grid["lrs"]:
        for wd in grid["weight_decays"]:  # each grid point fitted alone, scored on validation by hand
            single = linear_probe(x, y, vx, vy, lrs=(lr,), weight_decays=(wd,), epochs=15)
            scores[(lr, wd)] = mean_auroc(single.predict_scores(vx), vy).mean
    assert [(g["lr"], g["weight_decay"]) for g in probe.grid] == list(scores)
    assert [g["val_score"] for g in probe.grid] == list(scores.values())
    assert len(set(scores.values())) > 1
    assert (probe.lr, probe.weight_decay) == max(scores, key=scores.get)
    assert probe.val_score == max(scores.values())
    flipped = linear_probe(x, y, vx, 1 - vy, **grid)  # AUROC becomes 1 - AUROC: the worst point wins
    assert (flipped.lr, flipped.weight_decay) == min(scores, key=scores.get)
    again = linear_probe(x, y, vx, vy, **grid)
    assert torch.equal(again.head.weight, probe.head.weight)  # deterministic for a seed


def test_linear_probe_errors():
    x, y = blobs(10, 0)
    with pytest.raises(ValueError, match="multilabel=True"):
        linear_probe(x, y, x, y, multilabel=True, **FAST)
    with pytest.raises(ValueError, match="train_feats must be"):
        linear_probe(x[:5], y, x, y, **FAST)
    with pytest.raises(ValueError, match="empty hyper-parameter grid"):
        linear_probe(x, y, x, y, lrs=())


class TokenEncoder(nn.Module):
    """Input (B, 1 + N, D) tokens; ``tokens`` returns the first as [CLS] and the others as patches."""

    def __init__(self, with_cls: bool = True) -> None:
        super().__init__()
        self.with_cls = with_cls
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * x.mean(1)

    def tokens(self, x):
        return (self.scale * x[:, 0] if self.with_cls else None), self.scale * x[:, 1:]


def token_batches(n, seed, batch=8):
    """[CLS] is noise; the patch tokens carry the label (+/- 2 on feature 0)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 4, 3, generator=g)
    x[:, 1:, 0] += (4.0 * labels - 2.0)[:, None]
    return (
        x,
        labels,
        [{"image": x[i : i + batch], "label": labels[i : i + batch]} for i in range(0, n, batch)],
    )


def test_extract_features_views_and_modes():
    encoder = TokenEncoder()
    encoder.train()
    x, labels, batches = token_batches(20, 0)
    pooled, y = extract_features(encoder, batches)
    assert torch.equal(pooled, x.mean(1)) and torch.equal(y, labels)
    assert encoder.training  # mode restored
    cls, _ = extract_features(encoder, [(x, labels)], view="cls")
    assert torch.equal(cls, x[:, 0])
    both, none = extract_features(encoder, batches, view="cls+mean_patch", label_key=None)
    assert torch.equal(both, torch.cat([x[:, 0], x[:, 1:].mean(1)], 1)) and none is None
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        extract_features(TokenEncoder(with_cls=False), batches, view="cls")
    with pytest.raises(KeyError, match="no key 'img'"):
        extract_features(encoder, batches, image_key="img")
    with pytest.raises(ValueError, match="view must be one of"):
        extract_features(encoder, batches, view="patch")


def test_choose_view_keeps_the_view_that_validates_better():
    _, _, train = token_batches(40, 1)
    _, _, val = token_batches(20, 2)
    view, probe = choose_view(TokenEncoder(), train, val, **FAST)
    assert view == "cls+mean_patch" and probe.val_score == 1.0
    _, cls_only = choose_view(TokenEncoder(), train, val, views=("cls",), **FAST)
    assert cls_only.val_score < probe.val_score


def test_slice_average_embedding_equals_a_loop_over_slices():
    torch.manual_seed(0)
    encoder_2d = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    volume = torch.randn(2, 2, 6, 5, 7)
    for axis in (2, 3, 4, -1):
        n = volume.shape[axis]
        expected = sum(encoder_2d(volume.select(axis, i)) for i in range(n)) / n
        assert torch.allclose(slice_average_embedding(encoder_2d, volume, axis, batch=3), expected, atol=1e-6)
    with pytest.raises(ValueError, match="spatial axis"):
        slice_average_embedding(encoder_2d, volume, axis=1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        slice_average_embedding(encoder_2d, volume[0])


def subject_items():
    """Subjects s0..s11 with 1-3 images each; subject i has class i % 3 (one class per subject)."""
    return [
        {"image": f"s{i}_{j}.png", "label": i % 3, "subject": f"s{i}"}
        for i in range(12)
        for j in range(1 + i % 3)
    ]


def test_fewshot_splits_take_k_whole_subjects_per_class_deterministically():
    items = subject_items()
    splits = fewshot_splits(items, "label", shots=(1, 2, 4), seeds=(0, 1, 2))
    assert sorted(splits) == [(k, s) for k in (1, 2, 4) for s in (0, 1, 2)]
    for (k, _), split in splits.items():
        chosen = {item["subject"] for item in split}
        for c in range(3):  # exactly k subjects of each class
            assert len({item["subject"] for item in split if item["label"] == c}) == k
        assert split == [item for item in items if item["subject"] in chosen]  # every image of a subject
    shuffled = random.Random(7).sample(items, len(items))
    again = fewshot_splits(shuffled, "label", shots=(1, 2, 4), seeds=(0, 1, 2))
    for key, split in splits.items():  # same subjects whatever the input order
        assert sorted(i["image"] for i in again[key]) == sorted(i["image"] for i in split)
    assert len({tuple(i["subject"] for i in splits[(1, s)]) for s in (0, 1, 2)}) > 1  # seeds differ


def test_fewshot_splits_multilabel_and_errors():
    items = [
        {"label": [1, 0], "subject": "a"},
        {"label": [0, 0], "subject": "a"},
        {"label": [1, 1], "subject": "b"},
        {"label": [0, 1], "subject": "c"},
    ]
    assert class_subjects(items) == {0: ["a", "b"], 1: ["b", "c"]}
    for split in fewshot_splits(items, shots=(1,), seeds=(0, 1, 2, 3)).values():
        subjects = {item["subject"] for item in split}
        assert subjects & {"a", "b"} and subjects & {"b", "c"}
        assert ("a" in subjects) == (len([i for i in split if i["subject"] == "a"]) == 2)
    with pytest.raises(ValueError, match=r"only \{0: 2, 1: 2\} subjects"):
        fewshot_splits(items, shots=(3,))
    with pytest.raises(KeyError, match="item 1 has no key 'subject'"):
        fewshot_splits([{"label": 0, "subject": "a"}, {"label": 1}])
    with pytest.raises(ValueError, match="0/1 values"):
        fewshot_splits([{"label": [0, 2], "subject": "a"}])


def test_run_fewshot_linear_rows():
    (x, y), (vx, vy), (tx, ty) = (
        blobs(n, seed, dim=3, classes=3, noise=0.5) for n, seed in ((36, 0), (15, 1), (15, 2))
    )
    # two images per subject; the labels cycle, so subject p0 has classes 0 and 1, p1 classes 2 and 0, ...
    subjects = [f"p{i // 2}" for i in range(36)]
    rows = run_fewshot_linear(x, y, subjects, vx, vy, tx, ty, shots=(1, 2), seeds=(0, 1), **FAST)
    assert [(r["shots"], r["seed"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for row in rows:
        assert row["images"] == 2 * row["subjects"] and row["subjects"] <= 3 * row["shots"]
        assert row["mean_auroc"] == 1.0 and row["accuracy"] == 1.0 and row["skipped_classes"] == []
    with pytest.raises(ValueError, match="36 features, 36 labels and 3 subjects"):
        run_fewshot_linear(x, y, subjects[:3], vx, vy, tx, ty, **FAST)
