"""Preprocess a datalist once into a patch-addressable store (:mod:`common.data.store`).

``python -m common.data.preprocess --datalist_file X --key training --out_dir D`` runs today's deterministic
pipeline on every item (``load_transforms``: load, channel-first, RAS, resample to ``pixdim`` with bilinear
images and nearest-neighbour labels, the intensity scheme; then ``CropForegroundd`` to the body as the
segmentation and SSL pipelines do) and writes the result, its statistics, bounding boxes and class locations
into ``D``. The same item through today's NIfTI pipeline and through the store gives the same array.

- **Intensity**: ``ct`` / ``mr`` / ``minmax`` as :func:`common.transforms.builders.intensity_transform`
  (the segmentation and classification bundles); ``modality`` as the SSL pool
  (:class:`common.transforms.ssl.NormalizeByModalityd`: each item's ``modality`` field picks a CT window or
  MR percentiles). ``ct_window`` defaults to each one's default.
- **Parallel**: ``--workers N`` processes (one item each at a time); a progress bar counts items.
- **Resumable**: an item is done when its record ``D/items/<id>.json`` exists with the same pipeline
  settings, the same source hashes and its files present; its files are written under temporary names and
  renamed, the record last. A killed run, rerun, redoes only unfinished items; temporary files left by a
  kill are never read.
- **Array jobs**: ``--part K --num_parts N`` processes the items ``K, K + N, ...``. The run that finds
  every item of the datalist recorded (finished or failed) writes ``D/manifest.json``; each part may be run
  again and the last one to finish writes it.
- **Bad inputs**: the datalist checks run once, here: headers by :func:`common.data.validation.check_sample`
  (files exist, 3D, label grid = image grid), voxels as they are read by
  :class:`common.data.checked_loading.CheckedLoadd` (readable, finite, label values below
  ``num_classes``), and labels must fit uint8. A bad item is recorded with its files and the message in
  the manifest's ``failed`` list while the other items go on; the command then exits non-zero naming them.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import fire
import numpy as np
from monai import transforms as mt
from monai.data import load_decathlon_datalist
from tqdm import tqdm

from ..transforms.builders import INTENSITY_MODES, load_transforms
from ..transforms.ssl import NormalizeByModalityd
from . import cache, store
from .checked_loading import CheckedLoadd
from .fetch import sha256sum
from .validation import Datalist, check_sample, voxel_spacing

logger = logging.getLogger(__name__)

PREPROCESS_INTENSITY = (*INTENSITY_MODES, "modality")
SOURCE_KEYS = ("image", "label")


def item_id(index: int, item: Mapping) -> str:
    """``<index>_<image file name without extensions>``, e.g. ``000003_totalseg_B_ct``: unique per datalist
    position, readable, and the same in every part of an array job."""
    name = Path(str(item.get("image", "item"))).name.split(".")[0]
    return f"{index:06d}_{re.sub(r'[^A-Za-z0-9_-]', '_', name)}"


def pipeline_settings(
    pixdim: float | Sequence[float] | None,
    intensity: str,
    ct_window: Sequence[float] | None,
    crop_foreground: bool,
    dtype: str,
    num_classes: int | None,
    label_key: str | None,
) -> dict:
    """The settings that define a store's content (recorded in the manifest and in every item record; an
    item recorded with other settings is redone)."""
    if intensity not in PREPROCESS_INTENSITY:
        raise ValueError(f"unknown intensity {intensity!r}; choose one of {PREPROCESS_INTENSITY}")
    if dtype not in store.IMAGE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {store.IMAGE_DTYPES}")
    if isinstance(pixdim, Sequence):
        pixdim = [float(p) for p in pixdim]
    elif pixdim is not None:
        pixdim = float(pixdim)
    return {
        "pixdim": pixdim,
        "intensity": intensity,
        "ct_window": None if ct_window is None else [float(v) for v in ct_window],
        "crop_foreground": bool(crop_foreground),
        "dtype": dtype,
        "num_classes": num_classes,
        "label_key": label_key,
        "chunks": list(store.CHUNKS),
        "blocks": list(store.BLOCKS),
        "locations_per_class": store.LOCATIONS_PER_CLASS,
    }


def _with_label(item: Mapping, label_key: str | None, base: str) -> dict:
    """``item`` with its label file (``label_key``, resolved against ``base`` like MONAI resolves ``label``)
    under ``label``, or without a label when ``label_key`` is None."""
    item = dict(item)
    if label_key != "label":
        item.pop("label", None)
        if label_key is not None and label_key in item:
            path = Path(item.pop(label_key))
            item["label"] = str(path if path.is_absolute() else Path(base) / path)
    return item


def deterministic_transforms(settings: Mapping, keys: Sequence[str]) -> tuple[list, list]:
    """Today's deterministic pipeline for ``keys`` (``image`` and optionally ``label``) in two parts: loading
    and resampling (:func:`common.transforms.builders.load_transforms` without its intensity step), then the
    intensity scheme and the crop to the body. The image between the two is what ``intensity.raw``
    describes."""
    window = {} if settings["ct_window"] is None else {"ct_window": tuple(settings["ct_window"])}
    by_modality = settings["intensity"] == "modality"  # the SSL pool's scheme replaces the last step
    scheme = "minmax" if by_modality else settings["intensity"]
    *loading, last = load_transforms(keys, 3, 1, settings["pixdim"], scheme, **window)
    normalise = [NormalizeByModalityd("image", **window) if by_modality else last]
    if settings["crop_foreground"]:
        normalise.append(mt.CropForegroundd(list(keys), source_key="image", allow_smaller=True))
    return loading, normalise


def _source_info(path: str, previous: Mapping | None) -> dict:
    """Size, modification time and sha256 of a source file; the hash is reused from ``previous`` when size
    and modification time are unchanged (a rerun does not read every finished source again)."""
    stat = os.stat(path)
    info = {"file": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous and previous.get("size") == info["size"] and previous.get("mtime_ns") == info["mtime_ns"]:
        return {**info, "sha256": previous["sha256"]}
    return {**info, "sha256": sha256sum(Path(path))}


def _is_done(out_dir: Path, record: Mapping | None, settings: Mapping, sources: Mapping) -> bool:
    if not record or "error" in record or record.get("pipeline") != settings:
        return False
    if {k: v["sha256"] for k, v in record["sources"].items()} != {k: v["sha256"] for k, v in sources.items()}:
        return False
    return all((out_dir / record[k]).is_file() for k in ("image", "label", "locations") if k in record)


def _write_item(out_dir: Path, ident: str, index: int, data: Mapping, settings: Mapping, raw: dict) -> dict:
    """Write the volumes and locations of one preprocessed item; return its record (not yet written)."""
    paths = store.item_paths(ident)
    image = data["image"]
    array = image.numpy().astype(settings["dtype"])
    label = data["label"].numpy() if "label" in data else None
    if label is not None and (
        label.min() < 0 or label.max() > 255 or not np.array_equal(label, label.round())
    ):
        raise ValueError(f"label {data['label'].meta.get('filename_or_obj')} must hold integers 0..255")
    store.write_volume(array, out_dir / paths["image"])
    affine = np.asarray(image.affine, dtype=np.float64)
    record = {
        "image": paths["image"],
        "shape": list(array.shape),
        "dtype": settings["dtype"],
        "spacing": voxel_spacing(affine).round(6).tolist(),
        "affine": affine.tolist(),
        "intensity": {"raw": raw, "stored": store.intensity_stats(array)},
        "foreground_box": store.bounding_box((array > 0).any(axis=0)),
    }
    if label is not None:
        label = label.astype(np.uint8)
        store.write_volume(label, out_dir / paths["label"])
        locations = store.sample_locations(label[0], store.LOCATIONS_PER_CLASS, seed=index)
        store.write_locations(locations, out_dir / paths["locations"])
        values, counts = np.unique(label, return_counts=True)
        record.update(
            label=paths["label"],
            locations=paths["locations"],
            class_voxels={str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
            label_box=store.bounding_box(label[0] > 0),
        )
    return record


def _load(loading: list, item: Mapping, index: int, origin: tuple[str, str], settings: Mapping) -> dict:
    """``item`` through ``loading`` (its first step a ``LoadImaged``) with the datalist checks: headers
    first (:func:`common.data.validation.check_sample`), then the voxels as they are read
    (:class:`common.data.checked_loading.CheckedLoadd`: readable, finite, label values below
    ``num_classes``), each error naming the datalist, key, item and file."""
    check_sample(item, spatial_dims=3)
    single = Datalist(
        [item],
        file=origin[0],
        key=origin[1],
        origins={str(item["image"]): index},
        num_classes=settings["num_classes"],
        spatial_dims=3,
        on_bad_sample="raise",
        image_key="image",
        label_key="label",
    )
    data = CheckedLoadd(loading[0], single)(dict(item))
    return mt.Compose(loading[1:])(data)


def process_item(
    out_dir: str | os.PathLike, index: int, item: Mapping, settings: Mapping, origin: tuple[str, str]
) -> tuple[str, dict]:
    """Preprocess one datalist item (paths resolved) unless it is done; return ``(status, record)`` with
    status ``skipped``, ``done`` or ``failed`` (the record then has the item's files and the ``error``).
    ``origin`` is the datalist file and key, named in error messages."""
    out_dir = Path(out_dir)
    ident = item_id(index, item)
    previous = store.read_record(out_dir, ident)
    files = {k: item[k] for k in SOURCE_KEYS if k in item}
    base = {"id": ident, "index": index, "pipeline": dict(settings)}
    try:
        if "image" not in item:
            raise ValueError(f"no 'image' key (keys: {sorted(item)})")
        for key, path in files.items():
            if not isinstance(path, str):
                raise ValueError(f"{key!r} must be one file path, got {path!r}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{key!r} file not found: {path}")
        old = (previous or {}).get("sources", {})
        sources = {k: _source_info(p, old.get(k)) for k, p in files.items()}
        if _is_done(out_dir, previous, settings, sources):
            return "skipped", previous
        loading, normalise = deterministic_transforms(settings, list(files))
        data = _load(loading, item, index, origin, settings)
        raw = store.intensity_stats(data["image"].numpy())
        data = mt.Compose(normalise)(data)
        record = _write_item(out_dir, ident, index, data, settings, raw)
    except (FileNotFoundError, ValueError) as err:
        where = f"{origin[0]}, key {origin[1]!r}, item {index}"  # the content checks' messages start so
        message = str(err) if str(err).startswith(where) else f"{where}: {err}"
        failed = {**base, "files": files, "error": message}
        store.write_record(out_dir, failed)
        return "failed", failed
    fields = {k: v for k, v in item.items() if k not in SOURCE_KEYS}
    record = {**base, "sources": sources, **record, "fields": fields}
    store.write_record(out_dir, record)
    return "done", record


def _run_items(
    out_dir: Path, todo: list[tuple[int, dict]], settings: Mapping, origin: tuple[str, str], workers: int
) -> dict:
    status = {}
    bar = tqdm(total=len(todo), desc=f"preprocess -> {out_dir}", unit="item")
    if workers <= 1:
        for index, item in todo:
            status[index] = process_item(out_dir, index, item, settings, origin)
            bar.update()
    else:
        # spawned, not forked: a fork of a process whose torch / blosc2 threads hold locks can hang
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(process_item, out_dir, i, item, settings, origin): i for i, item in todo}
            for future in as_completed(futures):
                status[futures[future]] = future.result()
                bar.update()
    bar.close()
    return status


def _assemble(out_dir: Path, items: list[dict], header: dict) -> Path | None:
    """Write the manifest when every item of the datalist has a record made with these settings."""
    records = [store.read_record(out_dir, item_id(i, item)) for i, item in enumerate(items)]
    current = [r for r in records if r and r.get("pipeline") == header["pipeline"]]
    if len(current) < len(items):
        logger.info("%d of %d items recorded; manifest.json not written yet", len(current), len(items))
        return None
    finished = [r for r in current if "error" not in r]
    failed = [r for r in current if "error" in r]
    return store.write_manifest(out_dir, header, finished, failed)


def preprocess(
    datalist_file: str,
    key: str = "training",
    out_dir: str = "store",
    dataset_dir: str | None = None,
    intensity: str = "ct",
    pixdim: float | Sequence[float] | None = 2.0,
    ct_window: Sequence[float] | None = None,
    crop_foreground: bool = True,
    dtype: str = "float16",
    num_classes: int | None = None,
    label_key: str | None = "label",
    workers: int = 1,
    part: int = 0,
    num_parts: int = 1,
) -> dict:
    """Preprocess the items under ``key`` of ``datalist_file`` (paths relative to ``dataset_dir``, by default
    the embedded data's) into the store ``out_dir``; see the module docstring. ``label_key`` names the
    items' label field (None: store the images only).

    Returns ``{"done": [ids], "skipped": [ids], "failed": [records], "manifest": path or None}`` for this
    run's part."""
    if not 0 <= part < num_parts:
        raise ValueError(f"part must be in 0..{num_parts - 1}, got {part}")
    settings = pipeline_settings(pixdim, intensity, ct_window, crop_foreground, dtype, num_classes, label_key)
    base = str(dataset_dir) if dataset_dir is not None else str(cache.dataset_dir())
    items = [
        _with_label(item, label_key, base)
        for item in load_decathlon_datalist(str(datalist_file), True, key, base)
    ]
    out = Path(out_dir)
    todo = [(i, item) for i, item in enumerate(items) if i % num_parts == part]
    header = {"datalist": str(Path(datalist_file).resolve()), "key": key, "pipeline": settings}
    status = _run_items(out, todo, settings, (header["datalist"], key), workers)
    manifest = _assemble(out, items, header)
    results = [status[i] for i, _ in todo]
    return {
        "done": [r["id"] for s, r in results if s == "done"],
        "skipped": [r["id"] for s, r in results if s == "skipped"],
        "failed": [r for s, r in results if s == "failed"],
        "manifest": manifest,
    }


@functools.wraps(preprocess)
def command(*args, **kwargs) -> None:
    """The CLI: :func:`preprocess`, then a summary; exits non-zero naming each failed item's files."""
    summary = preprocess(*args, **kwargs)
    print(
        f"[preprocess] {len(summary['done'])} preprocessed, {len(summary['skipped'])} already done, "
        f"{len(summary['failed'])} failed; manifest: {summary['manifest'] or 'not yet (other parts pending)'}"
    )
    if summary["failed"]:
        lines = [f"  {r['id']}: {json.dumps(r['files'])}: {r['error']}" for r in summary["failed"]]
        raise SystemExit("[preprocess] failed items:\n" + "\n".join(lines))


if __name__ == "__main__":
    fire.Fire(command)
