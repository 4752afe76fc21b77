"""A 3D classification set from the labelled CT subjects: organ-centred patches with their organ's class.

Each patch is a ``PATCH_SIZE`` cube (voxels) at ``SPACING`` mm, centred on a voxel drawn (fixed seed) inside
one organ of :data:`ORGAN_CLASSES`; groups of the unified multi-organ labels are merged (vertebrae T11/T12,
ribs 7-12 left and right, left and right autochthon). An item carries the centre organ's index (``label``,
multi-class) and ``findings``, a 0/1 vector of the organs with at least ``MIN_VOXELS`` voxels in the patch
(multi-label). The organ labels are TotalSegmentator model output (see ``prepare.LABEL_SOURCE_NOTE``).
Subject A (``totalseg_A``) is the test subject; of the training subjects' patches, the last centre drawn per
organ is the validation patch (same subjects: it selects hyper-parameters, it does not measure transfer).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from .labels import MULTIORGAN_CT_CLASSES

ORGAN_CLASSES = ("liver", "spleen", "stomach", "aorta", "colon", "vertebra", "rib", "autochthon")
SPACING = 2.0
PATCH_SIZE = 32
CENTRES_PER_ORGAN = 4
MIN_VOXELS = 20
TEST_SUBJECT = "totalseg_A"


MERGED_PREFIXES = {"vertebra": "vertebrae_", "rib": "rib_", "autochthon": "autochthon_"}


def organ_of_class(name: str) -> str | None:
    """The :data:`ORGAN_CLASSES` group of a multi-organ class name, ``None`` if it is in none."""
    for organ in ORGAN_CLASSES:
        if name == organ or name.startswith(MERGED_PREFIXES.get(organ, "\0")):
            return organ
    return None


def grouped_labels(label: np.ndarray) -> np.ndarray:
    """Multi-organ class indices -> ``ORGAN_CLASSES`` index + 1 (0: none of them)."""
    lookup = np.zeros(len(MULTIORGAN_CT_CLASSES), dtype=np.int16)
    for index, name in enumerate(MULTIORGAN_CT_CLASSES):
        organ = organ_of_class(name)
        if organ is not None:
            lookup[index] = ORGAN_CLASSES.index(organ) + 1
    return lookup[label.astype(np.int64)]


def resample(volume: np.ndarray, zooms, mode: str) -> np.ndarray:
    """``volume`` resampled to ``SPACING`` mm (trilinear for images, nearest for labels)."""
    size = [max(1, round(n * z / SPACING)) for n, z in zip(volume.shape, zooms, strict=True)]
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kwargs)[0, 0].numpy()


def cut(volume: np.ndarray, centre, fill: float) -> np.ndarray:
    """The ``PATCH_SIZE`` cube of ``volume`` around ``centre``, padded with ``fill`` outside the volume."""
    half = PATCH_SIZE // 2
    padded = np.pad(volume, half, constant_values=fill)
    return padded[tuple(slice(c, c + PATCH_SIZE) for c in centre)]


def subject_patches(
    subject: str, image_file: Path, label_file: Path, out_dir: Path, root: Path
) -> list[dict]:
    """Write the patches of one subject (skipping files already there) and return their datalist items."""
    image_nii = nib.as_closest_canonical(nib.load(image_file))
    label_nii = nib.as_closest_canonical(nib.load(label_file))
    zooms = image_nii.header.get_zooms()[:3]
    image = resample(np.asanyarray(image_nii.dataobj), zooms, "trilinear")
    label = resample(grouped_labels(np.asanyarray(label_nii.dataobj)), zooms, "nearest").astype(np.int16)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    rng = np.random.default_rng(sum(map(ord, subject)))
    items = []
    for organ_index, organ in enumerate(ORGAN_CLASSES, start=1):
        voxels = np.argwhere(label == organ_index)
        if len(voxels) < MIN_VOXELS:
            continue
        for k, centre in enumerate(voxels[rng.choice(len(voxels), CENTRES_PER_ORGAN, replace=False)]):
            patch_label = cut(label, centre, 0)
            counts = np.bincount(patch_label.ravel(), minlength=len(ORGAN_CLASSES) + 1)[1:]
            out = out_dir / f"{subject}_{organ}_{k}.nii.gz"
            if not out.is_file():
                with atomic_path(out) as tmp:
                    nib.save(nib.Nifti1Image(cut(image, centre, -1024.0).astype(np.float32), affine), tmp)
            items.append(
                {
                    "image": str(out.relative_to(root)),
                    "label": organ_index - 1,
                    "findings": [int(c >= MIN_VOXELS) for c in counts],
                    "subject": subject,
                    "organ": organ,
                    "centre": k,
                }
            )
    return items


def prepare_organ_patches(root: Path, multiorgan: dict[str, dict[str, str]]) -> dict:
    """The organ-patch datalist (``training`` / ``validation`` / ``test``) from the prepared multi-organ CT
    subjects (``{subject: {"image": relpath, "label": relpath}}``)."""
    out_dir = root / "ct_organ_patches"
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for subject, files in multiorgan.items():
        print(f"[data] organ patches: {subject}", flush=True)
        items += subject_patches(subject, root / files["image"], root / files["label"], out_dir, root)
    last = CENTRES_PER_ORGAN - 1
    return {
        "name": "ct_organ_patches",
        "description": f"{PATCH_SIZE}^3-voxel patches at {SPACING} mm of the three real multi-organ CT "
        f"subjects, centred inside one of {len(ORGAN_CLASSES)} organs ('label', multi-class) with the organs "
        f"present ('findings', multi-label, >= {MIN_VOXELS} voxels); labels are TotalSegmentator model "
        "output. Subject A is the test subject; the last centre per organ of the training subjects is the "
        "validation set.",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(ORGAN_CLASSES)},
        "finding_names": list(ORGAN_CLASSES),
        "training": [i for i in items if i["subject"] != TEST_SUBJECT and i["centre"] != last],
        "validation": [i for i in items if i["subject"] != TEST_SUBJECT and i["centre"] == last],
        "test": [i for i in items if i["subject"] == TEST_SUBJECT],
    }
