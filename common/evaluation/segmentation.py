"""Per-class segmentation metrics, the trivial-predictor baseline and overlay figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def dice_per_class(
    pred: np.ndarray, label: np.ndarray, num_classes: int, annotated: Sequence[bool] | None = None
) -> np.ndarray:
    """Dice ``2|P∩L| / (|P| + |L|)`` of each class 1..num_classes-1 between two label maps.

    Classes absent from both maps get NaN (undefined), so that averages skip them. With ``annotated``
    (one bool per class, background first), classes the label's source does not annotate get NaN too:
    a prediction there can be neither confirmed nor refuted (partial labels, SuPreM).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if annotated is not None and len(annotated) != num_classes:
        raise ValueError(f"annotated has {len(annotated)} entries for {num_classes} classes")
    scores = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        if annotated is not None and not annotated[c]:
            continue
        p, g = pred == c, label == c
        denominator = p.sum() + g.sum()
        if denominator:
            scores[c - 1] = 2.0 * np.logical_and(p, g).sum() / denominator
    return scores


def trivial_dice(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of the best constant predictor of each class: labelling every voxel as that class.

    Predicting background everywhere scores 0; predicting the class everywhere scores ``2|L| / (|L| + N)``
    for ``N`` voxels. A trained network must clearly beat this per-class baseline.
    """
    counts = np.bincount(label.astype(np.int64).ravel(), minlength=num_classes)[1:num_classes]
    scores = 2.0 * counts / (counts + label.size)
    return np.where(counts > 0, scores, np.nan)


def format_dice_table(class_names: Sequence[str], dice: np.ndarray, baseline: np.ndarray) -> str:
    """Markdown table: per-class Dice beside the trivial baseline, and the mean over labelled classes."""
    lines = ["| class | Dice | trivial predictor |", "|---|---|---|"]
    for name, d, b in zip(class_names, dice, baseline, strict=True):
        if not (np.isnan(d) and np.isnan(b)):
            lines.append(f"| {name} | {d:.3f} | {b:.3f} |")
    present = ~np.isnan(baseline)
    lines.append(
        f"| **mean (classes in label)** | {np.nanmean(np.where(present, dice, np.nan)):.3f} | "
        f"{np.nanmean(baseline):.3f} |"
    )
    return "\n".join(lines)


def save_overlay(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Save a PNG with the axial slice of most labelled voxels: image, label overlay, prediction overlay.

    Arrays are (X, Y, Z) in RAS orientation; slices are shown in radiological convention (anterior up,
    the patient's right on the viewer's left).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((label > 0).sum(axis=(0, 1))))
    radiological = lambda volume: np.fliplr(np.rot90(volume[:, :, z]))  # noqa: E731
    num_classes = int(max(label.max(), pred.max())) + 1
    cmap = plt.get_cmap("tab20", max(num_classes, 2))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, overlay, name in zip(axes, (None, label, pred), ("CT", "label", "prediction"), strict=True):
        ax.imshow(radiological(image), cmap="gray")
        if overlay is not None:
            masked = np.ma.masked_equal(radiological(overlay), 0)
            ax.imshow(masked, cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=0.5, interpolation="nearest")
        ax.set_title(f"{name} (axial slice {z})")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
