"""Classification on frozen encoder features: the DINOv2-radiology protocols (papers/004, section 3.3.1).

- Features: the encoder's pooled output, its [CLS] token, or [CLS] concatenated with the mean patch token
  (:func:`extract_features`, views of :func:`common.networks.classifier.embed`); a 3D volume through a 2D
  encoder is the mean of its slice embeddings (:class:`common.networks.classifier.SliceAveragedEncoder`).
- kNN on l2-normalised features (:func:`knn_predict`): the weighted vote of DINO (Caron et al. 2021) after
  Wu et al. 2018, eq. 7: the k most cosine-similar training samples vote with weight ``exp(s / T)``;
  multi-label, ML-kNN (Zhang & Zhou 2007, :mod:`common.evaluation.mlknn`) as DINOv2-radiology uses it, the
  weighted vote as an option.
- Linear probing (:func:`linear_probe`): one linear layer on standardised features, hyper-parameters
  chosen on validation; :func:`choose_view` keeps [CLS] or [CLS]+mean patch, whichever validates better.
- Metrics: AUROC (Mann-Whitney), its mean over classes (multi-label: one binary task per class; multi-class:
  one-vs-rest), accuracy.

Labels are ``(N,)`` integer class indices (multi-class) or ``(N, C)`` 0/1 (multi-label); every function
tells the two apart by the labels' shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from ..networks.classifier import embed
from .mlknn import mlknn_predict, nearest_neighbours

MULTILABEL_KNN = ("mlknn", "weighted")


def _as_tensor(values, dtype=None) -> torch.Tensor:
    """A plain CPU tensor (not a MONAI MetaTensor) of ``values``."""
    if torch.is_tensor(values):
        tensor = values.detach().cpu().as_subclass(torch.Tensor)
    else:
        tensor = torch.as_tensor(np.asarray(values))
    return tensor if dtype is None else tensor.to(dtype)


def _is_multilabel(labels: torch.Tensor, name: str = "labels") -> bool:
    if labels.ndim not in (1, 2):
        raise ValueError(f"{name} must be (N,) class indices or (N, C) 0/1, got shape {tuple(labels.shape)}")
    return labels.ndim == 2


def _split_batch(batch, image_key: str, label_key: str | None):
    if isinstance(batch, Mapping):
        for key in (image_key, label_key):
            if key is not None and key not in batch:
                raise KeyError(f"batch has no key {key!r} (keys: {sorted(batch)})")
        return batch[image_key], (batch[label_key] if label_key is not None else None)
    if isinstance(batch, Sequence) and len(batch) == 2:
        return batch[0], (batch[1] if label_key is not None else None)
    raise TypeError(
        f"a batch must be a mapping with {image_key!r} or an (image, label) pair, got {type(batch)}"
    )


def extract_views(
    encoder: nn.Module,
    batches: Iterable,
    views: Sequence[str],
    image_key: str = "image",
    label_key: str | None = "label",
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """:func:`extract_features` for several views in one pass: ``({view: (N, D_view)}, labels)``."""
    was_training = encoder.training
    encoder.eval()
    features: dict[str, list[torch.Tensor]] = {view: [] for view in views}
    labels = []
    try:
        with torch.no_grad():
            for batch in batches:
                image, label = _split_batch(batch, image_key, label_key)
                image = torch.as_tensor(image, device=device).as_subclass(torch.Tensor)
                for view in views:
                    features[view].append(embed(encoder, image, view).float().cpu())
                if label is not None:
                    labels.append(_as_tensor(label))
    finally:
        encoder.train(was_training)
    if not features[views[0]]:
        raise ValueError("extract_features: the loader gave no batch")
    return {v: torch.cat(f) for v, f in features.items()}, (torch.cat(labels) if labels else None)


def extract_features(
    encoder: nn.Module,
    batches: Iterable,
    image_key: str = "image",
    label_key: str | None = "label",
    device: str | torch.device = "cpu",
    view: str = "pooled",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen features of every batch (a DataLoader or any iterable of dicts or ``(image, label)`` pairs):
    ``(features (N, D) float32 on CPU, labels (N, ...) or None when label_key is None)``. Runs the encoder in
    eval mode without gradients (its mode is restored after); ``view`` as in :func:`embed`."""
    features, labels = extract_views(encoder, batches, (view,), image_key, label_key, device)
    return features[view], labels


def knn_predict(
    train_feats,
    train_labels,
    test_feats,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    multilabel: str = "mlknn",
) -> torch.Tensor:
    """kNN class scores ``(N_test, C)`` on l2-normalised features.

    Multi-class (``train_labels`` (N,)), DINO's weighted kNN (Wu et al. 2018): the ``k`` training samples
    of highest cosine similarity ``s_j`` vote with weight ``w_j = exp(s_j / T)``,
    ``score_c = sum_j w_j [y_j = c]`` (``C = num_classes``, default ``max(label) + 1``). Multi-label
    (``(N, C)`` 0/1): ``multilabel="mlknn"`` (default), ML-kNN (Zhang & Zhou 2007, papers/004's reference
    [55]; :func:`~common.evaluation.mlknn.mlknn_predict`, smoothing 1, ``temperature`` unused), the score is
    each label's posterior probability; ``"weighted"``: ``score_c = sum_j w_j y_jc / sum_j w_j``, the
    weighted share of neighbours with class c. Test samples run ``chunk`` at a time.
    """
    if multilabel not in MULTILABEL_KNN:
        raise ValueError(f"multilabel must be one of {MULTILABEL_KNN}, got {multilabel!r}")
    train = nn.functional.normalize(_as_tensor(train_feats, torch.float64), dim=1)
    test = nn.functional.normalize(_as_tensor(test_feats, torch.float64), dim=1)
    labels = _as_tensor(train_labels)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(
            f"features must be (N, D) with equal D, got {tuple(train.shape)}, {tuple(test.shape)}"
        )
    if labels.shape[0] != train.shape[0]:
        raise ValueError(f"{labels.shape[0]} train labels for {train.shape[0]} train features")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0]}] (the training set size), got {k}")
    if _is_multilabel(labels, "train_labels"):
        if multilabel == "mlknn":
            return mlknn_predict(train, labels, test, k, chunk=chunk).float()
        votes = labels.to(torch.float64)
    else:
        classes = int(labels.max()) + 1 if num_classes is None else num_classes
        if labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"train_labels must be in [0, {classes}), got [{labels.min()}, {labels.max()}]")
        votes = nn.functional.one_hot(labels.long(), classes).to(torch.float64)
    scores = []
    for similarity, index in nearest_neighbours(test, train, k, chunk):
        weights = (similarity / temperature).exp()
        class_scores = torch.einsum("nk,nkc->nc", weights, votes[index])
        scores.append(class_scores / weights.sum(1, keepdim=True) if labels.ndim == 2 else class_scores)
    return torch.cat(scores).float()


def auroc(scores, labels) -> float:
    """Binary AUROC as the Mann-Whitney statistic: the share of (positive, negative) pairs whose positive
    scores higher, ties counting one half; ``(R_pos - P (P + 1) / 2) / (P N)`` with average ranks ``R``.
    ``ValueError`` unless both classes are present and the scores are finite."""
    s = _as_tensor(scores, torch.float64).numpy().reshape(-1)
    y = _as_tensor(labels).numpy().reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"AUROC labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUROC needs both classes, got {positives} positives and {negatives} negatives")
    rank_sum = rankdata(s)[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class AUROCSummary:
    """AUROC averaged over the classes that have both label values (``per_class``); ``skipped`` lists the
    classes left out (all positive or all negative in ``labels``)."""

    mean: float
    per_class: dict[int, float]
    skipped: tuple[int, ...]


def mean_auroc(scores, labels) -> AUROCSummary:
    """Mean AUROC over classes of ``scores`` (N, C): one binary task per column of multi-label ``labels``
    (N, C), or one-vs-rest for multi-class ``labels`` (N,). ``ValueError`` when no class can be scored."""
    s = _as_tensor(scores, torch.float64)
    y = _as_tensor(labels)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (N, C) for {y.shape[0]} labels, got {tuple(s.shape)}")
    if _is_multilabel(y):
        if y.shape != s.shape:
            raise ValueError(f"multi-label labels {tuple(y.shape)} and scores {tuple(s.shape)} differ")
        binary = y
    else:
        if y.numel() and (y.min() < 0 or y.max() >= s.shape[1]):
            raise ValueError(f"labels must be in [0, {s.shape[1]}) for {s.shape[1]} score columns")
        binary = nn.functional.one_hot(y.long(), s.shape[1])
    per_class, skipped = {}, []
    for c in range(s.shape[1]):
        column = binary[:, c]
        if column.unique().numel() < 2:
            skipped.append(c)
        else:
            per_class[c] = auroc(s[:, c], column)
    if not per_class:
        raise ValueError(f"no class has both positive and negative labels (classes {skipped})")
    return AUROCSummary(float(np.mean(list(per_class.values()))), per_class, tuple(skipped))


def accuracy(scores, labels) -> float:
    """Share of samples whose highest score is their class (multi-class ``labels`` (N,))."""
    s, y = _as_tensor(scores), _as_tensor(labels)
    if y.ndim != 1 or s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(
            f"accuracy needs scores (N, C) and labels (N,), got {tuple(s.shape)}, {tuple(y.shape)}"
        )
    return float((s.argmax(1) == y).double().mean())


@dataclass
class LinearProbe:
    """A fitted linear probe: ``head`` on features standardised by the training ``mean`` and ``std``; the
    chosen ``lr`` and ``weight_decay``, their validation mean AUROC, and every grid point's ``grid`` score."""

    head: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    multilabel: bool
    lr: float
    weight_decay: float
    val_score: float
    grid: list[dict] = field(default_factory=list)

    def logits(self, feats) -> torch.Tensor:
        x = _as_tensor(feats, torch.float32)
        with torch.no_grad():
            return self.head((x - self.mean) / self.std)

    def predict_scores(self, feats) -> torch.Tensor:
        """Class probabilities ``(N, C)``: softmax (multi-class) or per-class sigmoid (multi-label)."""
        logits = self.logits(feats)
        return logits.sigmoid() if self.multilabel else logits.softmax(1)


def _fit_head(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    multilabel: bool,
    lr: float,
    weight_decay: float,
    epochs: int,
    seed: int,
) -> nn.Linear:
    """Full-batch Adam on cross-entropy (multi-class) or per-class binary cross-entropy (multi-label), L2
    ``weight_decay`` on the weight only; weights start from N(0, 0.01^2) drawn with ``seed`` (the global RNG
    is left alone), the bias from zero."""
    head = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    optimiser = torch.optim.Adam(
        [
            {"params": [head.weight], "weight_decay": weight_decay},
            {"params": [head.bias], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    loss_fn = nn.functional.binary_cross_entropy_with_logits if multilabel else nn.functional.cross_entropy
    target = y.float() if multilabel else y.long()
    with torch.enable_grad():
        for _ in range(epochs):
            optimiser.zero_grad()
            loss_fn(head(x), target).backward()
            optimiser.step()
    return head.requires_grad_(False)


def linear_probe(
    train_feats,
    train_labels,
    val_feats,
    val_labels,
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1),
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-2),
    epochs: int = 200,
    multilabel: bool | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> LinearProbe:
    """A linear classifier on frozen features (DINOv2-radiology's linear probing), features standardised
    with the training mean and standard deviation (constant features keep std 1). Every (lr, weight decay)
    of the grid is fitted on the training set by :func:`_fit_head` and scored by :func:`mean_auroc` on the
    validation set only; the best (first on ties) is returned. ``multilabel`` defaults to the labels' shape
    (and must agree with it); ``num_classes`` to ``max(label) + 1`` over train and validation."""
    x = _as_tensor(train_feats, torch.float32)
    y, val_y = _as_tensor(train_labels), _as_tensor(val_labels)
    inferred = _is_multilabel(y, "train_labels")
    if multilabel is not None and multilabel != inferred:
        raise ValueError(f"multilabel={multilabel} but train_labels have shape {tuple(y.shape)}")
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"train_feats must be (N, D) for {y.shape[0]} labels, got {tuple(x.shape)}")
    classes = y.shape[1] if inferred else num_classes or int(max(y.max(), val_y.max())) + 1
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    best = None
    grid = []
    for lr, weight_decay in itertools.product(lrs, weight_decays):
        head = _fit_head(x, y, classes, inferred, lr, weight_decay, epochs, seed)
        probe = LinearProbe(head, mean, std, inferred, lr, weight_decay, float("nan"))
        probe.val_score = mean_auroc(probe.predict_scores(val_feats), val_y).mean
        grid.append({"lr": lr, "weight_decay": weight_decay, "val_score": probe.val_score})
        if best is None or probe.val_score > best.val_score:
            best = probe
    if best is None:
        raise ValueError("linear_probe: empty hyper-parameter grid (lrs and weight_decays must be non-empty)")
    best.grid = grid
    return best


def choose_view(
    encoder: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    views: Sequence[str] = ("cls", "cls+mean_patch"),
    image_key: str = "image",
    label_key: str = "label",
    device: str | torch.device = "cpu",
    **probe_kwargs,
) -> tuple[str, LinearProbe]:
    """DINOv2-radiology's linear probing of a ViT: a probe on each of ``views`` (default [CLS], and [CLS]
    concatenated with the mean patch token), keeping the view whose probe validates better (the first on
    ties). ``probe_kwargs`` go to :func:`linear_probe`. Returns ``(view, probe)``."""
    train, train_y = extract_views(encoder, train_batches, views, image_key, label_key, device)
    val, val_y = extract_views(encoder, val_batches, views, image_key, label_key, device)
    probes = {view: linear_probe(train[view], train_y, val[view], val_y, **probe_kwargs) for view in views}
    view = max(views, key=lambda v: probes[v].val_score)
    return view, probes[view]
