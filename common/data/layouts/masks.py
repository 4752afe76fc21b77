"""Per-structure mask layouts (AbdomenAtlas 1.1, TotalSegmentator): one ``segmentations/<name>.nii.gz``
per structure in each subject folder, merged into a label map at preprocess time (``labelmaps.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .base import require

SUFFIX = ".nii.gz"


def scan_subjects(root: Path, subjects: Sequence[str], order: Sequence[str] = ()) -> tuple[dict, list[dict]]:
    """``({id: structure}, items)`` for subject folders ``root/<subject>/{ct.nii.gz, segmentations/}``.

    Structure ids follow ``order`` first, then the other names found, sorted. Each item has ``image``,
    ``masks`` ({id: mask file}) and ``subject``; a subject without ``ct.nii.gz`` or ``segmentations/`` is a
    FileNotFoundError naming the path.
    """
    found = {}
    for subject in tqdm(subjects, desc=f"scanning {root.name}", disable=len(subjects) < 100):
        folder = root / subject
        require(folder / "ct.nii.gz", "CT image")
        seg = require(folder / "segmentations", "segmentations folder")
        found[subject] = {p.name.removesuffix(SUFFIX): p for p in sorted(seg.glob(f"*{SUFFIX}"))}
    names = [*order, *sorted({n for masks in found.values() for n in masks} - set(order))]
    ids = {name: i for i, name in enumerate(names, start=1)}
    items = [
        {
            "image": f"{subject}/ct.nii.gz",
            "masks": {ids[n]: str(p.relative_to(root)) for n, p in masks.items()},
            "subject": subject,
        }
        for subject, masks in found.items()
    ]
    return {i: n for n, i in ids.items()}, items
