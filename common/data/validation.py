"""Datalist checks before training: clear errors for bad input instead of a crash deep in a worker.

:func:`load_datalist` is what the bundles' train configs call instead of
``monai.data.load_decathlon_datalist``: it reads one key of a Decathlon datalist (MONAI resolves the
``image`` and ``label`` paths against ``base_dir``) and checks every item with :func:`check_sample`:

- the key is not empty;
- every file exists (``FileNotFoundError``);
- it is a readable image (not truncated, not another kind of file) with ``spatial_dims`` spatial
  dimensions and no NaN or infinite voxel;
- a label map holds only the class values ``0 .. num_classes - 1`` and has its image's shape and affine.

Each message names the datalist file, the key, the item's index and field, and the file at fault. With
``on_bad_sample="raise"`` (the default) the first bad item stops the run; with ``"skip"`` each bad item is
logged as a warning and left out, and the number skipped is logged (all of them bad is still an error).
Reading every file costs one extra load per volume at start-up; a file unchanged since it was last checked
in the same process (same path, size and modification time) is not read again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

logger = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("raise", "skip")
# image and label affines closer than this (mm) describe the same grid (NIfTI stores them as float32)
AFFINE_ATOL = 1e-3


def _bad_values(label: torch.Tensor, num_classes: int) -> list[float]:
    """The distinct values of ``label`` that are not one of the integers ``0 .. num_classes - 1``."""
    bad = (label < 0) | (label >= num_classes)
    if label.is_floating_point():
        bad |= label != label.round()
    return torch.unique(label[bad]).tolist() if bad.any() else []


@lru_cache(maxsize=512)
def _checked_grid(
    path: str, size: int, mtime_ns: int, spatial_dims: int, num_classes: int | None
) -> tuple[tuple[int, ...], tuple[tuple[float, ...], ...]]:
    """Load the image at ``path`` and check it; return its spatial shape and affine.

    ``size`` and ``mtime_ns`` only key the cache: a changed file is checked again. ``num_classes`` is given
    for label maps. Raises ValueError naming the file.
    """
    try:
        image = LoadImage(image_only=True, ensure_channel_first=True, dtype=None)(path)
    except Exception as err:  # readers raise EOFError, zlib, nibabel, ITK and RuntimeError errors
        raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err})") from err
    spatial = tuple(image.shape[1:])
    if len(spatial) != spatial_dims:
        raise ValueError(
            f"{path} has {len(spatial)} spatial dimensions (shape {spatial}, {image.shape[0]} channel(s)); "
            f"expected {spatial_dims}"
        )
    data = image.as_tensor()
    if data.is_floating_point():
        non_finite = int((~torch.isfinite(data)).sum())
        if non_finite:
            raise ValueError(f"{path} has {non_finite} NaN or infinite voxels (of {data.numel()})")
    if num_classes is not None:
        bad = _bad_values(data, num_classes)
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:10]) + (
                f", ... ({len(bad)} values)" if len(bad) > 10 else ""
            )
            raise ValueError(
                f"label {path} has values [{shown}] outside the {num_classes} classes 0..{num_classes - 1}"
            )
    affine = tuple(tuple(float(v) for v in row) for row in np.asarray(image.affine))
    return spatial, affine


def check_sample(
    item: Mapping,
    num_classes: int | None = None,
    spatial_dims: int = 3,
    image_key: str = "image",
    label_key: str = "label",
) -> None:
    """Check one datalist item whose ``image_key`` (and optional ``label_key``) hold resolved paths.

    Raises FileNotFoundError for an absent file and ValueError for an unreadable file, a wrong number of
    spatial dimensions, NaN or infinite voxels, label values outside ``0 .. num_classes - 1`` (checked
    when ``num_classes`` is given) or a label whose shape or affine differs from its image's.
    """
    grids = {}
    for field in (image_key, label_key):
        if field not in item:
            continue
        path = Path(item[field])
        if not path.exists():
            raise FileNotFoundError(f"{field!r} file not found: {path}")
        stat = path.stat()
        classes = num_classes if field == label_key else None
        grids[field] = _checked_grid(str(path), stat.st_size, stat.st_mtime_ns, spatial_dims, classes)
    if len(grids) < 2:
        return
    (image_shape, image_affine), (label_shape, label_affine) = grids[image_key], grids[label_key]
    if image_shape != label_shape:
        raise ValueError(
            f"image {item[image_key]} has shape {image_shape} "
            f"but label {item[label_key]} has shape {label_shape}"
        )
    if not np.allclose(image_affine, label_affine, rtol=0.0, atol=AFFINE_ATOL):
        raise ValueError(
            f"image {item[image_key]} and label {item[label_key]} have different affines: "
            f"{np.round(image_affine, 3).tolist()} vs {np.round(label_affine, 3).tolist()}"
        )


def load_datalist(
    datalist_file: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    spatial_dims: int = 3,
    on_bad_sample: str = "raise",
    image_key: str = "image",
    label_key: str = "label",
) -> list[dict]:
    """The items under ``key`` of the Decathlon datalist ``datalist_file``, paths resolved against
    ``base_dir`` by ``monai.data.load_decathlon_datalist``, each checked by :func:`check_sample`.

    ``on_bad_sample``: ``"raise"`` re-raises the first item's error with the datalist file, key and item
    index in front; ``"skip"`` logs each bad item and the number skipped, and returns the good ones. An
    empty key, or a key whose items are all bad, raises ValueError.
    """
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    items = load_decathlon_datalist(str(datalist_file), True, key, base_dir)
    if not items:
        raise ValueError(f"{datalist_file}: key {key!r} is empty, there is nothing to train on")
    kept = []
    for index, item in enumerate(items):
        try:
            check_sample(item, num_classes, spatial_dims, image_key, label_key)
        except (FileNotFoundError, ValueError) as err:
            err.args = (f"{datalist_file}, key {key!r}, item {index}: {err}",)
            if on_bad_sample == "raise":
                raise
            logger.warning("on_bad_sample='skip': leaving out %s", err)
        else:
            kept.append(item)
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
    return kept
