"""Few-shot linear probing with k subjects per class (DINOv2-radiology, papers/004, section 4.3, Figure 5:
1, 2, 4 and 8 patients per class, a linear layer on frozen features).

Subjects, not images, are sampled: for each class, ``k`` of the subjects that have an image of that class
(:func:`common.data.datalists.fewshot_split`, seeded and independent of the input order), and every image
of a chosen subject enters the training set. A subject can be chosen for several classes; the training set
is the union. A class with fewer than ``k`` subjects raises ``ValueError`` (a split that silently had fewer
shots would mislabel its results' row).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.datalists import fewshot_split
from .probes import accuracy, linear_probe, mean_auroc


def _item_classes(label, where: str) -> list[int]:
    """Classes of one item: ``[label]`` for a class index, the positive positions of a 0/1 list."""
    if isinstance(label, (list, tuple)):
        if any(v not in (0, 1) for v in label):
            raise ValueError(f"{where}: a multi-label label must be 0/1 values, got {label}")
        return [c for c, v in enumerate(label) if v == 1]
    if isinstance(label, bool) or not float(label).is_integer():
        raise ValueError(f"{where}: a label must be a class index or a 0/1 list, got {label!r}")
    return [int(label)]


def class_subjects(items: Sequence[dict], label_key: str = "label", subject_key: str = "subject") -> dict:
    """``{class: sorted subjects with at least one image of that class}``; ``KeyError`` naming the item
    without ``label_key`` or ``subject_key``."""
    subjects: dict[int, set[str]] = {}
    for i, item in enumerate(items):
        for key in (label_key, subject_key):
            if key not in item:
                raise KeyError(f"item {i} has no key {key!r} (keys: {sorted(item)})")
        for c in _item_classes(item[label_key], f"item {i} key {label_key!r}"):
            subjects.setdefault(c, set()).add(str(item[subject_key]))
    return {c: sorted(subjects[c]) for c in sorted(subjects)}


def fewshot_splits(
    items: Sequence[dict],
    label_key: str = "label",
    shots: Sequence[int] = (1, 2, 4, 8),
    seeds: Sequence[int] = (0, 1, 2),
    subject_key: str = "subject",
) -> dict[tuple[int, int], list[dict]]:
    """``{(k, seed): training items}``: for every class, ``k`` subjects drawn with ``seed`` among those with
    an image of the class, and all images of the chosen subjects (in the input order). Labels are class
    indices or 0/1 lists (multi-label: a subject belongs to every class it has a positive image of).
    ``ValueError`` naming the class when it has fewer than ``k`` subjects."""
    per_class = class_subjects(items, label_key, subject_key)
    splits = {}
    for k in shots:
        short = {c: len(s) for c, s in per_class.items() if len(s) < k}
        if short:
            raise ValueError(f"{k} subjects per class requested, but classes have only {short} subjects")
        for seed in seeds:
            chosen = {
                s for subjects in per_class.values() for s in fewshot_split(subjects, shots=k, seed=seed)
            }
            splits[(k, seed)] = [item for item in items if str(item[subject_key]) in chosen]
    return splits


def run_fewshot_linear(
    features,
    labels,
    subjects: Sequence,
    val_features,
    val_labels,
    test_features,
    test_labels,
    shots: Sequence[int] = (1, 2, 4, 8),
    seeds: Sequence[int] = (0, 1, 2),
    **probe_kwargs,
) -> list[dict]:
    """Few-shot linear probing on pre-extracted features: for every (k, seed) of :func:`fewshot_splits` on
    the training ``features`` (N, D), ``labels`` and ``subjects`` (N,), a
    :func:`~common.evaluation.probes.linear_probe` (hyper-parameters chosen on the validation set) scored
    on the test set. Rows ``{"shots", "seed", "subjects", "images", "lr", "weight_decay", "mean_auroc",
    "skipped_classes"}``, plus ``"accuracy"`` for multi-class labels."""
    labels = torch.as_tensor(labels)
    if not len(subjects) == labels.shape[0] == len(features):
        raise ValueError(f"{len(features)} features, {labels.shape[0]} labels and {len(subjects)} subjects")
    items = [{"index": i, "label": labels[i].tolist(), "subject": s} for i, s in enumerate(subjects)]
    rows = []
    for (k, seed), split in fewshot_splits(items, "label", shots, seeds, "subject").items():
        index = torch.tensor([item["index"] for item in split])
        probe = linear_probe(
            torch.as_tensor(features)[index],
            labels[index],
            val_features,
            val_labels,
            num_classes=int(labels.max()) + 1 if labels.ndim == 1 else None,
            seed=seed,
            **probe_kwargs,
        )
        scores = probe.predict_scores(test_features)
        summary = mean_auroc(scores, test_labels)
        row = {
            "shots": k,
            "seed": seed,
            "subjects": len({item["subject"] for item in split}),
            "images": len(split),
            "lr": probe.lr,
            "weight_decay": probe.weight_decay,
            "mean_auroc": summary.mean,
            "skipped_classes": list(summary.skipped),
        }
        if labels.ndim == 1:
            row["accuracy"] = accuracy(scores, test_labels)
        rows.append(row)
    return rows
