"""A preprocessed, patch-addressable volume store: one blosc2 array per volume and a JSON manifest.

Layout of a store directory ``D`` (written by :mod:`common.data.preprocess`)::

    D/manifest.json                 pipeline settings, one record per item, the failed items
    D/items/<id>.json               the record of one item, written last (the item is done when it exists)
    D/volumes/<id>_image.b2nd       the preprocessed image, channel-first (C, X, Y, Z), float16 or float32
    D/volumes/<id>_label.b2nd       the label map (1, X, Y, Z), uint8, when the item has one
    D/volumes/<id>_locations.npz    sampled voxel coordinates per class, for label-guided crops

Each ``.b2nd`` is a blosc2 NDArray cut into chunks (64³) of blocks (16³): a patch read through
:func:`read_patch` decompresses only the blocks it overlaps, from a memory-mapped file, so loading a crop
costs the crop, not the volume (the approach of nnssl, MIC-DKFZ/nnssl ``data/dataloading/dataset.py``:
blosc2 arrays opened by memory map). Every file is written under a temporary name and renamed
(:func:`common.atomic.atomic_path`), and the item's record after its volumes, so a killed writer never
leaves a half-written item that a reader could take for a finished one.

The coordinates of label-guided crops are kept per item in ``<id>_locations.npz`` (a few hundred per class),
not in the manifest: a manifest of thousands of labelled items stays small, so reading it at start-up does not
grow with the number of classes, and each item's coordinates are read when it is first cropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .datalists import write_json

STORE_FORMAT = "medfm-patch-store"
STORE_VERSION = 1
MANIFEST_NAME = "manifest.json"
ITEMS_DIR = "items"
VOLUMES_DIR = "volumes"
IMAGE_DTYPES = ("float16", "float32")
CHUNKS = (64, 64, 64)
BLOCKS = (16, 16, 16)
# ZSTD level 1 with byte shuffle: on the embedded CTs (2 mm, float16) 10-20 % smaller than LZ4 at a similar
# patch read time, 5x less CPU to write than ZSTD level 5 for 2 % smaller files.
CPARAMS = {"codec": "ZSTD", "clevel": 1, "filters": ["SHUFFLE"]}  # names of blosc2.Codec / blosc2.Filter


def blosc2_module():
    """``blosc2``, imported when a store is first used: it is the optional extra ``store``
    (``pip install medfm-bundles[store]``), so that the bundles run on NIfTI without it."""
    try:
        import blosc2
    except ImportError as err:
        raise ImportError(
            "the patch store needs blosc2: pip install 'medfm-bundles[store]' (or pip install blosc2)"
        ) from err
    return blosc2


def compression_parameters() -> dict:
    """:data:`CPARAMS` as blosc2's enums."""
    blosc2 = blosc2_module()
    return {
        "codec": blosc2.Codec[CPARAMS["codec"]],
        "clevel": CPARAMS["clevel"],
        "filters": [blosc2.Filter[name] for name in CPARAMS["filters"]],
    }


LOCATIONS_PER_CLASS = 300
FOREGROUND_KEY = "foreground"
RECORD_KEYS = ("id", "image", "shape", "affine")


def item_paths(item_id: str) -> dict[str, str]:
    """The paths (relative to the store directory) of one item's files."""
    return {
        "image": f"{VOLUMES_DIR}/{item_id}_image.b2nd",
        "label": f"{VOLUMES_DIR}/{item_id}_label.b2nd",
        "locations": f"{VOLUMES_DIR}/{item_id}_locations.npz",
        "record": f"{ITEMS_DIR}/{item_id}.json",
    }


def write_volume(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a channel-first ``(C, X, Y, Z)`` array as a blosc2 ``.b2nd`` file, atomically.

    Chunks are ``(C, 64, 64, 64)`` and blocks ``(C, 16, 16, 16)``, each cut to the array's shape."""
    if array.ndim != 4:
        raise ValueError(f"{path}: expected a channel-first (C, X, Y, Z) array, got shape {array.shape}")
    channels, spatial = array.shape[0], array.shape[1:]
    chunks = (channels, *(min(c, s) for c, s in zip(CHUNKS, spatial, strict=True)))
    blocks = (channels, *(min(b, c) for b, c in zip(BLOCKS, chunks[1:], strict=True)))
    with atomic_path(path) as tmp:
        blosc2_module().asarray(
            np.ascontiguousarray(array),
            urlpath=str(tmp),
            mode="w",
            chunks=chunks,
            blocks=blocks,
            cparams=compression_parameters(),
        )
    return Path(path)


def open_volume(path: str | os.PathLike):
    """Open a ``.b2nd`` volume read-only by memory map (nothing is decompressed until sliced)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"store volume not found: {path} (was the store moved or cleaned?)")
    return blosc2_module().open(str(path), mmap_mode="r")


def read_patch(volume, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The ``(C, *size)`` patch of a channel-first volume whose first voxel is at spatial index ``start``.

    Voxels outside the volume (``start`` may be negative, ``start + size`` beyond the shape) are zero, as
    after ``SpatialPad``'s constant padding. Only the blocks overlapping the patch are decompressed."""
    spatial = volume.shape[1:]
    lo = [max(0, s) for s in start]
    hi = [min(d, s + n) for d, s, n in zip(spatial, start, size, strict=True)]
    out = np.zeros((volume.shape[0], *size), dtype=volume.dtype)
    if all(h > low for low, h in zip(lo, hi, strict=True)):
        inside = volume[(slice(None), *(slice(low, h) for low, h in zip(lo, hi, strict=True)))]
        dst = tuple(slice(low - s, h - s) for low, h, s in zip(lo, hi, start, strict=True))
        out[(slice(None), *dst)] = inside
    return out


def sample_locations(label: np.ndarray, per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Up to ``per_class`` voxel coordinates ``(k, 3)`` of each class present in ``label`` (spatial, 3D),
    drawn uniformly without replacement, as ``class_<c>``, and as many of the foreground (``label > 0``)
    as ``foreground``: the centres that ``RandCropByLabelClasses`` and ``RandCropByPosNegLabel`` draw from."""
    rng = np.random.default_rng(seed)
    flat = label.reshape(-1)
    groups = {f"class_{int(c)}": flat == c for c in np.unique(flat)}
    groups[FOREGROUND_KEY] = flat > 0
    out = {}
    for name, mask in groups.items():
        index = np.flatnonzero(mask)
        if len(index) > per_class:
            index = np.sort(rng.choice(index, per_class, replace=False))
        out[name] = np.stack(np.unravel_index(index, label.shape), axis=1).astype(np.int32)
    return out


def write_locations(locations: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **locations)
    return Path(path)


def load_locations(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The coordinate arrays written by :func:`write_locations` (no pickled objects are loaded)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def intensity_stats(array: np.ndarray) -> dict[str, float]:
    """min, max, mean, std and the 0.5 / 50 / 99.5 percentiles of ``array`` (all voxels, float64)."""
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    p = np.percentile(values, [0.5, 50.0, 99.5])
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p00_5": float(p[0]),
        "p50": float(p[1]),
        "p99_5": float(p[2]),
    }


def bounding_box(mask: np.ndarray) -> dict[str, list[int]] | None:
    """``{"start": [...], "end": [...]}`` (end exclusive) of the non-zero voxels of a spatial ``mask``, or
    None when it is empty."""
    if not mask.any():
        return None
    axes = range(mask.ndim)
    start, end = [], []
    for axis in axes:
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in axes if a != axis)))
        start.append(int(hit[0]))
        end.append(int(hit[-1]) + 1)
    return {"start": start, "end": end}


def write_record(out_dir: str | os.PathLike, record: Mapping) -> Path:
    """Write one item's record ``items/<id>.json`` (atomically); this marks the item finished."""
    return write_json(dict(record), Path(out_dir) / item_paths(record["id"])["record"])


def read_record(out_dir: str | os.PathLike, item_id: str) -> dict | None:
    """The record of ``item_id``, or None when the item has none yet."""
    path = Path(out_dir) / item_paths(item_id)["record"]
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(
    out_dir: str | os.PathLike, header: Mapping, records: Sequence[Mapping], failed: Sequence[Mapping]
) -> Path:
    """Write ``manifest.json`` (atomically): ``header`` (datalist, key, pipeline), the finished items'
    ``records`` and the ``failed`` ones (each with its files and the error)."""
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        **header,
        "items": list(records),
        "failed": list(failed),
    }
    return write_json(manifest, Path(out_dir) / MANIFEST_NAME)


def load_manifest(path: str | os.PathLike) -> dict:
    """Read a store's manifest (a ``manifest.json`` or the store directory), check its format and the keys
    every record needs, and resolve the records' file paths against the store directory.

    Only the manifest is read, no volume: a missing or damaged volume surfaces when it is first cropped.
    Raises FileNotFoundError or ValueError naming the file and the key at fault."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"store manifest not found: {path} (write it with `python -m common.data.preprocess`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
        raise ValueError(
            f"{path}: not a {STORE_FORMAT} version {STORE_VERSION} manifest "
            f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    for key in ("items", "failed", "pipeline"):
        if key not in manifest:
            raise ValueError(f"{path}: no key {key!r}")
    root = path.parent
    for index, record in enumerate(manifest["items"]):
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}: items[{index}] has no key(s) {missing}")
        for key in ("image", "label", "locations"):
            if key in record:
                record[key] = str(root / record[key])
    return manifest
