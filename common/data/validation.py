"""Datalist checks: clear errors for bad input instead of a crash deep in a worker, without reading every
volume before the first training step.

:func:`load_datalist` is what the bundles' configs call instead of ``monai.data.load_decathlon_datalist``:
it reads one key of a Decathlon datalist (MONAI resolves the ``image`` and ``label`` paths against
``base_dir``) and checks every item's **headers** with :func:`check_sample`, which costs milliseconds per
item, so start-up does not grow with the volumes' size:

- the key is not empty;
- every file exists (``FileNotFoundError``);
- its header is readable and describes ``spatial_dims`` spatial dimensions with a positive, finite
  voxel spacing;
- a label has its image's shape and affine.

Headers are read by nibabel for NIfTI (``nib.load`` reads the header only; the voxels stay on disk), by
SimpleITK's ``ImageFileReader.ReadImageInformation`` for the formats ITK reads (NRRD, MetaImage, DICOM
files, PNG, ...); anything neither handles (``.npy``, a DICOM folder) is read in full by MONAI's
``LoadImage``, as before. Shapes and affines are those MONAI's readers give (channel dimension apart,
RAS affine).

What needs the voxels (a truncated file, NaN or infinite voxels, label values outside
``0 .. num_classes - 1``) is checked when an item is first read during training, by
:func:`common.data.checked_loading.with_content_check`; the :class:`Datalist` this function returns
carries what that check needs (the datalist file and key, each item's index, ``num_classes``,
``spatial_dims``, ``on_bad_sample``).

Each message names the datalist file, the key, the item's index and field, and the file at fault. With
``on_bad_sample="raise"`` (the default) the first bad item stops the run; with ``"skip"`` each bad item is
logged as a warning and left out, and the number skipped is logged (all of them bad is still an error).
A file unchanged since its header was last read in the same process (same path, size and modification
time) is not read again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import load_decathlon_datalist
from monai.data.utils import orientation_ras_lps, to_affine_nd
from monai.transforms import LoadImage

logger = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("raise", "skip")
# image and label affines closer than this (mm) describe the same grid (NIfTI stores them as float32)
AFFINE_ATOL = 1e-3
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# SimpleITK's message when no ImageIO of its build recognises a file
_SITK_UNKNOWN_FORMAT = "Unable to determine ImageIO reader"

Grid = tuple[tuple[int, ...], tuple[tuple[float, ...], ...]]


class Datalist(list):
    """The items :func:`load_datalist` returns (a ``list`` of dicts), with what the first-read content
    check needs: ``file`` and ``key`` of the datalist, ``origins`` (``{item_id: index in the key}``) and
    the check's settings. A slice (``datalist[1:2]`` in a smoke config) is a ``Datalist`` too."""

    def __init__(
        self,
        items: Sequence[dict],
        file: str,
        key: str,
        origins: Mapping[tuple[str, str], int],
        num_classes: int | None,
        spatial_dims: int,
        on_bad_sample: str,
        image_key: str,
        label_key: str,
    ) -> None:
        super().__init__(items)
        self.file, self.key, self.origins = file, key, origins
        self.num_classes, self.spatial_dims, self.on_bad_sample = num_classes, spatial_dims, on_bad_sample
        self.image_key, self.label_key = image_key, label_key

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return super().__getitem__(index)
        return Datalist(
            super().__getitem__(index),
            self.file,
            self.key,
            self.origins,
            self.num_classes,
            self.spatial_dims,
            self.on_bad_sample,
            self.image_key,
            self.label_key,
        )

    def item_id(self, item: Mapping) -> tuple[str, str]:
        """What tells ``item`` from the other items: its image and label paths."""
        return str(item.get(self.image_key)), str(item.get(self.label_key))

    def origin(self, item: Mapping) -> str:
        """``"<file>, key '<key>', item <index>"`` for ``item``."""
        return f"{self.file}, key {self.key!r}, item {self.origins.get(self.item_id(item), '?')}"


def bad_label_values(label: torch.Tensor, num_classes: int) -> list[float]:
    """The distinct values of ``label`` that are not one of the integers ``0 .. num_classes - 1``."""
    bad = (label < 0) | (label >= num_classes)
    if label.is_floating_point():
        bad |= label != label.round()
    return torch.unique(label[bad]).tolist() if bad.any() else []


def check_dims(path: str, spatial: Sequence[int], spatial_dims: int, channels: str = "") -> None:
    """Raise ValueError naming ``path`` unless it has ``spatial_dims`` spatial dimensions."""
    if len(spatial) != spatial_dims:
        raise ValueError(
            f"{path} has {len(spatial)} spatial dimensions (shape {tuple(spatial)}{channels}); "
            f"expected {spatial_dims}"
        )


def check_voxels(path: str, data: torch.Tensor, num_classes: int | None = None) -> None:
    """Raise ValueError naming ``path`` if a floating-point ``data`` has NaN or infinite voxels, or, for a
    label map (``num_classes`` given), values outside the integers ``0 .. num_classes - 1``."""
    if data.is_floating_point():
        non_finite = int((~torch.isfinite(data)).sum())
        if non_finite:
            raise ValueError(f"{path} has {non_finite} NaN or infinite voxels (of {data.numel()})")
    if num_classes is not None:
        bad = bad_label_values(data, num_classes)
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:10]) + (
                f", ... ({len(bad)} values)" if len(bad) > 10 else ""
            )
            raise ValueError(
                f"label {path} has values [{shown}] outside the {num_classes} classes 0..{num_classes - 1}"
            )


def check_same_grid(image: str, image_grid: Grid, label: str, label_grid: Grid) -> None:
    """Raise ValueError naming both files unless the label's (shape, affine) is the image's."""
    (image_shape, image_affine), (label_shape, label_affine) = image_grid, label_grid
    # MONAI's NIfTI reader gives a 2D image a 4x4 affine, its ITK reader a 3x3 one
    image_affine, label_affine = (
        to_affine_nd(len(image_shape), np.asarray(a)) for a in (image_affine, label_affine)
    )
    if tuple(image_shape) != tuple(label_shape):
        raise ValueError(
            f"image {image} has shape {tuple(image_shape)} but label {label} has shape {tuple(label_shape)}"
        )
    if not np.allclose(image_affine, label_affine, rtol=0.0, atol=AFFINE_ATOL):
        raise ValueError(
            f"image {image} and label {label} have different affines: "
            f"{np.round(image_affine, 3).tolist()} vs {np.round(label_affine, 3).tolist()}"
        )


def _nifti_header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine from a NIfTI header (MONAI's ``NibabelReader``: the first ``min(ndim, 3)``
    dimensions are spatial, a 4th is the channel)."""
    image = nib.load(path)
    return tuple(int(s) for s in image.shape[: max(min(len(image.shape), 3), 1)]), np.asarray(image.affine)


def _itk_header(path: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Shape and RAS affine from an ITK-readable header (MONAI's ``ITKReader``: size in ITK's x, y, z
    order, LPS affine turned to RAS); None when no ImageIO of SimpleITK recognises the file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        if _SITK_UNKNOWN_FORMAT in str(err):
            return None
        raise
    rank = reader.GetDimension()
    affine = np.eye(rank + 1)
    affine[:rank, :rank] = np.reshape(reader.GetDirection(), (rank, rank)) @ np.diag(reader.GetSpacing())
    affine[:rank, rank] = reader.GetOrigin()
    return tuple(int(s) for s in reader.GetSize()), orientation_ras_lps(affine)


def _monai_read(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine of the whole image read by MONAI's ``LoadImage`` (formats with no header
    reader here)."""
    image = LoadImage(image_only=True, ensure_channel_first=True, dtype=None)(path)
    return tuple(image.shape[1:]), np.asarray(image.affine)


def voxel_spacing(affine, spatial_dims: int = 3) -> np.ndarray:
    """The voxel spacing of an affine: the lengths of its first ``spatial_dims`` columns."""
    affine = np.asarray(affine, dtype=float)
    return np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0)


@lru_cache(maxsize=4096)
def _checked_header(path: str, size: int, mtime_ns: int, spatial_dims: int) -> Grid:
    """Read the header of the image at ``path`` and check it; return its spatial shape and affine.

    ``size`` and ``mtime_ns`` only key the cache: a changed file is checked again. Raises ValueError naming
    the file.
    """
    try:
        if path.lower().endswith(NIFTI_SUFFIXES):
            grid = _nifti_header(path)
        else:
            grid = (None if os.path.isdir(path) else _itk_header(path)) or _monai_read(path)
    except Exception as err:  # readers raise EOFError, zlib, nibabel, ITK and RuntimeError errors
        raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err})") from err
    spatial, affine = grid
    check_dims(path, spatial, spatial_dims)
    spacing = voxel_spacing(affine, spatial_dims)
    if not (np.isfinite(affine).all() and (spacing > 0).all()):
        raise ValueError(
            f"{path} has a zero or non-finite voxel spacing (affine {np.round(affine, 3).tolist()})"
        )
    return spatial, tuple(tuple(float(v) for v in row) for row in affine)


def header_grid(path: str | os.PathLike, spatial_dims: int = 3) -> Grid:
    """The spatial shape and RAS affine MONAI's reader would give the image at ``path``, from its header
    (checked: readable, ``spatial_dims`` dimensions, positive finite spacing; ValueError naming the file)."""
    stat = Path(path).stat()
    return _checked_header(str(path), stat.st_size, stat.st_mtime_ns, spatial_dims)


def check_sample(
    item: Mapping, spatial_dims: int = 3, image_key: str = "image", label_key: str = "label"
) -> None:
    """Check the headers of one datalist item whose ``image_key`` (and optional ``label_key``) hold
    resolved paths.

    Raises FileNotFoundError for an absent file and ValueError for an unreadable header, a wrong number of
    spatial dimensions, a zero or non-finite spacing, or a label whose shape or affine differs from its
    image's. The voxels are not read (see the module's docstring).
    """
    grids = {}
    for field in (image_key, label_key):
        if field not in item:
            continue
        path = Path(item[field])
        if not path.exists():
            raise FileNotFoundError(f"{field!r} file not found: {path}")
        grids[field] = header_grid(path, spatial_dims)
    if len(grids) == 2:
        check_same_grid(item[image_key], grids[image_key], item[label_key], grids[label_key])


def load_datalist(
    datalist_file: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    spatial_dims: int = 3,
    on_bad_sample: str = "raise",
    image_key: str = "image",
    label_key: str = "label",
) -> Datalist:
    """The items under ``key`` of the Decathlon datalist ``datalist_file``, paths resolved against
    ``base_dir`` by ``monai.data.load_decathlon_datalist``, each item's headers checked by
    :func:`check_sample`.

    ``on_bad_sample``: ``"raise"`` re-raises the first item's error with the datalist file, key and item
    index in front; ``"skip"`` logs each bad item and the number skipped, and returns the good ones. An
    empty key, or a key whose items are all bad, raises ValueError. ``num_classes`` (label values) and
    the policy also apply when the items are first read, through
    :func:`common.data.checked_loading.with_content_check`.
    """
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    items = load_decathlon_datalist(str(datalist_file), True, key, base_dir)
    if not items:
        raise ValueError(f"{datalist_file}: key {key!r} is empty, there is nothing to train on")
    kept, origins = [], {}
    for index, item in enumerate(items):
        try:
            check_sample(item, spatial_dims, image_key, label_key)
        except (FileNotFoundError, ValueError) as err:
            err.args = (f"{datalist_file}, key {key!r}, item {index}: {err}",)
            if on_bad_sample == "raise":
                raise
            logger.warning("on_bad_sample='skip': leaving out %s", err)
        else:
            kept.append(item)
            origins.setdefault((str(item.get(image_key)), str(item.get(label_key))), index)
    if len(kept) < len(items):
        logger.warning(
            "%s, key %r: skipped %d of %d samples (on_bad_sample='skip')",
            datalist_file,
            key,
            len(items) - len(kept),
            len(items),
        )
    if not kept:
        raise ValueError(f"{datalist_file}: every sample of key {key!r} is bad, there is nothing to train on")
    return Datalist(
        kept, str(datalist_file), key, origins, num_classes, spatial_dims, on_bad_sample, image_key, label_key
    )
