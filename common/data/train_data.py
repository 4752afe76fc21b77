"""The training dataset of a 3D train config, from NIfTI volumes or from a preprocessed store.

Every 3D train config has ``store_manifest`` (a store directory or its ``manifest.json``, written by
``python -m common.data.preprocess``) and ``data_source``, ``"store"`` when a manifest is given and
``"nifti"`` otherwise. The config's pipeline builder gets ``data_source`` too
(:func:`~common.transforms.ssl_transforms`, :func:`~common.transforms.segmentation_transforms` and those
built on them): for the store it starts at the random part of today's pipeline, whose first step reads the
store and states the preprocessing settings it stands in for (``expect``). :func:`train_dataset` then
builds today's ``CacheDataset`` over the datalist with the content checks at first read
(:func:`~common.data.checked_loading.with_content_check`), or a plain ``Dataset`` over the store's records
after checking the manifest's settings against those expectations: a store preprocessed at another
spacing, intensity scheme, CT window or number of classes would silently train on other data (its items
were content-checked when preprocessed).

In a train config::

    "dataset": {
        "_target_": "common.data.train_data.train_dataset",
        "data_source": "@data_source",
        "data": "$common.data.load_datalist(...) if @data_source == 'nifti' else None",
        "transform": "@train#preprocessing",
        "manifest": "@store_manifest",
        ...
    }

With the store, no NIfTI file is read at start-up (the datalist is not loaded): only ``manifest.json``; a
``data`` given anyway (a smoke config's sliced datalist) is not used.

The NIfTI path caches what a stated memory budget holds: with ``cache_memory_gb`` (the configs' key of that
name, default ``null``: ``cache_rate`` alone, as before), ``CacheDataset`` caches the first items whose
volumes, resampled to the pipeline's spacing as float32 (:func:`resampled_bytes`, from the headers the
datalist check read), fit the budget; the others are read when drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, Spacingd
from monai.utils import ensure_tuple_rep

from ..transforms.builders import CT_WINDOW, DATA_SOURCES
from ..transforms.ssl import POOL_CT_WINDOW
from .checked_loading import with_content_check
from .patch_dataset import store_records
from .store import MANIFEST_NAME, load_manifest
from .validation import header_grid, voxel_spacing

logger = logging.getLogger(__name__)

# the CT window a store's intensity scheme applied when preprocessing got none (`--ct_window` unset)
DEFAULT_CT_WINDOWS = {"ct": CT_WINDOW, "modality": POOL_CT_WINDOW}


def _canonical(key: str, value, pipeline: Mapping):
    """``value`` of a pipeline setting in one form: spacings as 3 floats, windows as 2 floats (the scheme's
    default for None), the rest as is."""
    if key == "pixdim" and value is not None:
        return tuple(float(v) for v in ensure_tuple_rep(value, 3))
    if key == "ct_window":
        window = DEFAULT_CT_WINDOWS.get(pipeline.get("intensity")) if value is None else value
        return None if window is None else tuple(float(v) for v in window)
    return value


def check_store_settings(path: str, pipeline: Mapping, expect: Mapping) -> None:
    """Raise ValueError naming the manifest ``path`` and the first setting of ``expect`` that its
    ``pipeline`` does not have (compared as :func:`_canonical` forms)."""
    for key, want in expect.items():
        have = pipeline.get(key)
        if _canonical(key, have, pipeline) != _canonical(key, want, {**pipeline, **expect}):
            raise ValueError(
                f"{path}: the store was preprocessed with {key}={have!r}, this config uses {key}={want!r}; "
                f"preprocess again with --{key} (python -m common.data.preprocess) or set {key} to match"
            )


def pipeline_steps(transform: Callable) -> list:
    """The steps of ``transform``, nested ``Compose`` flattened."""
    return list(transform.flatten().transforms) if isinstance(transform, Compose) else [transform]


def store_expectations(transform: Callable) -> list[dict]:
    """The ``expect`` settings of the store-reading steps of ``transform``; ValueError when none reads it."""
    steps = pipeline_steps(transform)
    found = [step.expect for step in steps if hasattr(step, "expect")]
    if not found:
        raise ValueError(
            "data_source 'store': the train transform has no step that reads the store (build it with "
            f"data_source='store'); its steps: {[type(s).__name__ for s in steps]}"
        )
    return found


def pipeline_spacing(transform: Callable) -> tuple[float, ...] | None:
    """The ``pixdim`` of the first resampling step (``Spacingd``) of ``transform``; None without one."""
    for step in pipeline_steps(transform):
        if isinstance(step, Spacingd):
            return tuple(float(v) for v in step.spacing_transform.pixdim)
    return None


def _padded(pixdim: Sequence[float] | float, ndim: int) -> list[float]:
    """``pixdim`` as MONAI's ``Spacing`` applies it to ``ndim`` axes: cut, or padded with its last value."""
    values = [float(v) for v in (pixdim if isinstance(pixdim, Sequence) else [pixdim])][:ndim]
    return values + [values[-1]] * (ndim - len(values))


def resampled_bytes(
    item: Mapping, pixdim: Sequence[float] | None, keys: Sequence[str] = ("image", "label")
) -> int:
    """Bytes of ``item``'s ``keys`` volumes loaded and resampled to ``pixdim`` (None: their own grid), as
    float32: the size of its cache entry before a crop to the body shrinks it (an upper bound). From the
    headers (cached since the datalist check read them)."""
    total = 0
    for key in keys:
        if key not in item:
            continue
        shape, affine = header_grid(item[key])
        spacing = voxel_spacing(affine, len(shape))
        target = spacing if pixdim is None else np.asarray(_padded(pixdim, len(shape)), dtype=float)
        total += int(np.prod(np.ceil(np.asarray(shape) * spacing / target))) * 4
    return total


def budget_cache_num(data: Sequence[Mapping], budget_gb: float, pixdim: Sequence[float] | None) -> int:
    """How many of ``data``'s first items fit ``budget_gb`` GB once cached (:func:`resampled_bytes`)."""
    budget, used = budget_gb * 2**30, 0
    for count, item in enumerate(data):
        used += resampled_bytes(item, pixdim)
        if used > budget:
            return count
    return len(data)


def train_dataset(
    data_source: str,
    transform: Callable,
    data: Sequence | None = None,
    manifest: str | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    on_bad_sample: str = "raise",
    cache_memory_gb: float | None = None,
) -> Dataset:
    """``"nifti"``: ``CacheDataset(data, with_content_check(transform, data), cache_rate, num_workers)``,
    today's dataset; with ``cache_memory_gb``, at most the items that fit it are cached
    (:func:`budget_cache_num` at the pipeline's spacing).
    ``"store"``: ``Dataset`` over the records of ``manifest`` (``on_bad_sample`` for the items that failed
    preprocessing, :func:`common.data.patch_dataset.store_records`) with ``transform``, after checking
    the manifest's pipeline settings against what ``transform``'s store steps expect. Nothing is cached:
    a crop reads only its blocks, and the memory does not grow with the number of items."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; choose one of {DATA_SOURCES}")
    if data_source == "nifti":
        if data is None:
            raise ValueError("data_source 'nifti' needs the datalist (data)")
        checked = with_content_check(transform, data)
        cache_num = len(data)
        if cache_memory_gb is not None:
            cache_num = budget_cache_num(data, cache_memory_gb, pipeline_spacing(transform))
            logger.info(
                "cache_memory_gb %s: caching %d of %d items (the rest are read when drawn)",
                cache_memory_gb,
                min(cache_num, int(len(data) * cache_rate)),
                len(data),
            )
        return CacheDataset(
            data, checked, cache_num=cache_num, cache_rate=cache_rate, num_workers=num_workers
        )
    if not manifest:
        raise ValueError("data_source 'store' needs store_manifest (a store directory or its manifest.json)")
    path = str(Path(manifest) / MANIFEST_NAME if Path(manifest).is_dir() else Path(manifest))
    content = load_manifest(path)
    for expect in store_expectations(transform):
        check_store_settings(path, content["pipeline"], expect)
    return Dataset(store_records(path, on_bad_sample, content), transform)
