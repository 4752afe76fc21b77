"""AbdomenAtlas 1.1 (Li et al., SuPreM): ``BDMAP_00000001/ct.nii.gz`` and
``BDMAP_00000001/segmentations/<organ>.nii.gz`` for its 25 structures (names as
:data:`~common.data.partial_labels.ABDOMENATLAS_CLASSES`). No split is published: a seeded ``val_fraction``
is held out."""

from __future__ import annotations

from pathlib import Path

from ..partial_labels import ABDOMENATLAS_CLASSES
from .base import split_groups
from .labelmaps import segmentation_datalist
from .masks import scan_subjects


def abdomenatlas(
    root: str | Path,
    target: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    labels_dir: str = "medfm_labels",
) -> dict:
    """Datalist of the AbdomenAtlas 1.1 folder ``root``; the per-organ masks are merged into label maps."""
    root = Path(root)
    subjects = sorted(p.name for p in root.glob("BDMAP_*") if p.is_dir())
    if not subjects:
        raise FileNotFoundError(f"no BDMAP_* case folders in {root}")
    own, items = scan_subjects(root, subjects, ABDOMENATLAS_CLASSES[1:])
    return segmentation_datalist(
        "abdomenatlas",
        f"AbdomenAtlas 1.1, {len(subjects)} CTs, per-organ masks merged; validation: seeded {val_fraction:g}",
        root,
        split_groups(items, val_fraction, seed),
        own,
        target,
        labels_dir,
    )
