"""TotalSegmentator v1 (104 structures) and v2 (117): ``meta.csv`` (``;``-separated, ``image_id`` and
``split`` = ``train``/``val``/``test`` among other columns), ``s0000/ct.nii.gz`` and
``s0000/segmentations/<structure>.nii.gz``. The dataset's own class ids are its structure names sorted."""

from __future__ import annotations

from pathlib import Path

from .base import read_csv
from .labelmaps import segmentation_datalist
from .masks import scan_subjects

SPLITS = {"train": "training", "val": "validation", "test": "test"}


def totalsegmentator(root: str | Path, target: str | None = None, labels_dir: str = "medfm_labels") -> dict:
    """Datalist of the TotalSegmentator folder ``root`` with its ``meta.csv`` split."""
    root = Path(root)
    rows = read_csv(root / "meta.csv", ("image_id", "split"), delimiter=";")
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise ValueError(f"{root / 'meta.csv'}: column 'split' has values {bad}; expected {sorted(SPLITS)}")
    own, items = scan_subjects(root, [r["image_id"] for r in rows])
    split_of = {r["image_id"]: SPLITS[r["split"]] for r in rows}
    splits = {key: [i for i in items if split_of[i["subject"]] == key] for key in SPLITS.values()}
    version = {104: "v1", 117: "v2"}.get(len(own), f"{len(own)} structures")
    return segmentation_datalist(
        "totalsegmentator",
        f"TotalSegmentator {version}, {len(rows)} CTs, per-structure masks merged; meta.csv split",
        root,
        splits,
        own,
        target,
        labels_dir,
    )
