"""DICOM radiographs (VinDr-CXR, MIMIC-CXR DICOM) converted at preprocess time to the 2D NIfTI the
radiograph bundles read: MONAI loads a DICOM radiograph as ``H x W x 1`` (three spatial dimensions, which
:func:`common.data.load_datalist` rejects for a 2D bundle) and NIfTI drops the photometric tag, so the
conversion is :func:`common.data.radiographs.real_radiograph`'s ([0, 1] MONOCHROME2 at its pixel size)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import nibabel as nib

from ...atomic import atomic_path
from ..radiographs import real_radiograph


def dicom_to_nifti(root: Path, image: str, images_dir: str) -> str:
    """Convert ``root/image`` to ``root/images_dir/<image without suffix>.nii.gz`` (skipped when
    present); the new path relative to ``root``."""
    relative = PurePosixPath(images_dir) / PurePosixPath(image).with_suffix(".nii.gz")
    out = root / relative
    if not out.is_file():
        with atomic_path(out) as tmp:
            nib.save(nib.Nifti1Image(*real_radiograph(root / image)), tmp)
    return str(relative)
