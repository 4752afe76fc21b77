"""FLARE22 (MICCAI 2022 abdominal organ challenge) labelled cases: ``images/FLARE22_Tr_0001_0000.nii.gz``
and ``labels/FLARE22_Tr_0001.nii.gz``, 13 organs. No validation split is published with the labelled
cases: a seeded ``val_fraction`` is held out."""

from __future__ import annotations

from pathlib import Path

from .base import require, split_groups
from .labelmaps import segmentation_datalist

FLARE22_LABELS = {
    1: "liver",
    2: "right kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior vena cava",
    7: "right adrenal gland",
    8: "left adrenal gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left kidney",
}


def flare22(
    root: str | Path,
    target: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    labels_dir: str = "medfm_labels",
) -> dict:
    """Datalist of the FLARE22 labelled-case folder ``root`` (holding ``images/`` and ``labels/``)."""
    root = Path(root)
    images = sorted(require(root / "images", "FLARE22 images folder").glob("FLARE22_Tr_*_0000.nii.gz"))
    if not images:
        raise FileNotFoundError(f"no FLARE22_Tr_*_0000.nii.gz in {root / 'images'}")
    cases = []
    for image in images:
        subject = image.name.removesuffix("_0000.nii.gz")
        label = require(root / "labels" / f"{subject}.nii.gz", f"label of {image}")
        cases.append(
            {"image": str(image.relative_to(root)), "label": str(label.relative_to(root)), "subject": subject}
        )
    return segmentation_datalist(
        "flare22",
        f"FLARE22 labelled abdomen CT, 13 organs; validation: seeded {val_fraction:g} (seed {seed})",
        root,
        split_groups(cases, val_fraction, seed),
        FLARE22_LABELS,
        target,
        labels_dir,
    )
