"""Read training crops from a preprocessed store (:mod:`common.data.store`) instead of whole volumes.

:class:`RandStorePatchd` turns one manifest record into ``num_samples`` dict samples whose ``image`` (and
``label``) are cut from the item's blosc2 arrays: only the blocks a crop overlaps are decompressed, so a crop
costs the same whatever the volume's size, and no volume is cached. The samples are what today's NIfTI
pipelines give after their deterministic transforms, ``SpatialPadd`` to ``roi_size`` and a crop at the same
place: channel-first float32 ``MetaTensor`` s whose affine is the crop's (the item's affine moved to the
crop's first voxel), plus the datalist item's other fields (``modality``, ``source``, ...), so the random
transforms that follow in today's pipelines run unchanged. Crop centres are drawn as MONAI's crops draw them:

- ``uniform``: a uniformly random position (``RandSpatialCropd``);
- ``pos_neg``: a foreground (``label > 0``) voxel with probability ``pos / (pos + neg)``, else a background
  voxel (``RandCropByPosNegLabeld``);
- ``classes``: a class drawn by ``ratios`` (default: every class equally; classes absent from the item are
  never drawn), then a voxel of it (``RandCropByLabelClassesd``).

The voxels come from the few hundred per class that preprocessing sampled uniformly (``<id>_locations.npz``),
not from every voxel of the label. Volumes smaller than ``roi_size`` are padded with zeros on both sides as
``SpatialPadd`` pads them. :class:`PatchDataset` is a MONAI ``Dataset`` over a store's manifest with this
crop first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, Randomizable, Transform
from monai.utils import ensure_tuple_rep

from .store import FOREGROUND_KEY, blosc2_module, load_locations, load_manifest, open_volume, read_patch
from .validation import ON_BAD_SAMPLE

logger = logging.getLogger(__name__)

CROP_MODES = ("uniform", "pos_neg", "classes")
# each process keeps the class locations of the items it cropped last (28 classes x 300 voxels: ~0.1 MB each)
_cached_locations = lru_cache(maxsize=256)(load_locations)
_single_threaded_pid = None


def _one_blosc2_thread_in_workers() -> None:
    """``blosc2.set_nthreads(1)`` once in each ``DataLoader`` worker process (see the module docstring)."""
    global _single_threaded_pid
    if _single_threaded_pid != os.getpid() and torch.utils.data.get_worker_info() is not None:
        blosc2_module().set_nthreads(1)
        _single_threaded_pid = os.getpid()


class RandStorePatchd(Randomizable, Transform):
    """``num_samples`` random crops of ``roi_size`` from one store record (see the module docstring).

    ``expect``: the preprocessing settings these crops stand in for (keys of the manifest's ``pipeline``),
    checked against the store by :func:`common.data.train_data.train_dataset`."""

    def __init__(
        self,
        roi_size: int | Sequence[int],
        mode: str = "uniform",
        num_samples: int = 1,
        pos: float = 1.0,
        neg: float = 1.0,
        ratios: Sequence[float] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        expect: Mapping | None = None,
    ) -> None:
        if mode not in CROP_MODES:
            raise ValueError(f"unknown crop mode {mode!r}; choose one of {CROP_MODES}")
        if mode == "pos_neg" and (pos < 0 or neg < 0 or pos + neg == 0):
            raise ValueError(f"pos and neg must be non-negative and not both zero, got {pos}, {neg}")
        self.roi_size = ensure_tuple_rep(roi_size, 3)
        self.mode = mode
        self.num_samples = num_samples
        self.pos_ratio = pos / (pos + neg) if mode == "pos_neg" else None
        self.ratios = None if ratios is None else [float(r) for r in ratios]
        self.image_key = image_key
        self.label_key = label_key
        self.expect = dict(expect or {})

    def _class_weights(
        self, record: Mapping, locations: Mapping[str, np.ndarray]
    ) -> tuple[list[str], np.ndarray]:
        """The classes a crop centre may be drawn from and their probabilities (absent classes get 0)."""
        names = sorted((k for k in locations if k.startswith("class_")), key=lambda k: int(k[6:]))
        if self.ratios is None:
            weights = np.ones(len(names))
        else:
            classes = [int(k[6:]) for k in names]
            if max(classes) >= len(self.ratios):
                raise ValueError(
                    f"store item {record['id']} has class {max(classes)} but ratios gives {len(self.ratios)}"
                )
            weights = np.array([self.ratios[c] for c in classes])
        if weights.sum() <= 0:
            raise ValueError(f"store item {record['id']}: no class with a positive ratio is present")
        return names, weights / weights.sum()

    def _centre(self, record: Mapping, locations: Mapping[str, np.ndarray]) -> np.ndarray:
        """One label-guided crop centre in the item's voxel coordinates."""
        if self.mode == "pos_neg":
            foreground, background = locations[FOREGROUND_KEY], locations.get("class_0", np.empty((0, 3)))
            use_fg = self.R.rand() < self.pos_ratio
            if len(foreground) == 0 or len(background) == 0:  # as MONAI: take what exists
                use_fg = len(foreground) > 0
            pool = foreground if use_fg else background
        else:
            names, weights = self._class_weights(record, locations)
            pool = locations[names[self.R.choice(len(names), p=weights)]]
        return pool[self.R.randint(len(pool))]

    def _start(self, shape: Sequence[int], centre: np.ndarray | None) -> list[int]:
        """The crop's first voxel in the item's coordinates, as after ``SpatialPadd(roi_size)`` (symmetric)
        and a crop of the padded volume: uniform over the valid positions, or centred on ``centre`` and
        moved inside the padded volume."""
        start = []
        for d, (size, roi) in enumerate(zip(shape, self.roi_size, strict=True)):
            padded = max(size, roi)
            before = (padded - size) // 2
            if centre is None:
                first = self.R.randint(padded - roi + 1)
            else:
                first = min(max(int(centre[d]) + before - roi // 2, 0), padded - roi)
            start.append(first - before)
        return start

    def crop(self, record: Mapping, start: Sequence[int]) -> dict:
        """The sample whose crop starts at ``start`` (the item's voxel coordinates; may reach outside the
        volume, which reads as zeros)."""
        affine = np.asarray(record["affine"], dtype=np.float64)
        moved = affine.copy()
        moved[:3, 3] += affine[:3, :3] @ np.asarray(start, dtype=np.float64)
        meta = {"filename_or_obj": record["image"], "patch_start": np.asarray(start)}  # collates to (B, 3)
        sample = dict(record.get("fields", {}))
        for key, field in ((self.image_key, "image"), (self.label_key, "label")):
            if field in record:
                patch = read_patch(open_volume(record[field]), start, self.roi_size)
                data = torch.from_numpy(patch.astype(np.float32))
                sample[key] = MetaTensor(data, affine=torch.from_numpy(moved), meta=dict(meta))
        return sample

    def __call__(self, record: Mapping) -> list[dict]:
        _one_blosc2_thread_in_workers()
        locations = None
        if self.mode != "uniform":
            if "locations" not in record:
                raise ValueError(
                    f"store item {record['id']} ({record['image']}) has no label: "
                    f"crop mode {self.mode!r} needs one (use 'uniform')"
                )
            locations = _cached_locations(record["locations"])
        samples = []
        for _ in range(self.num_samples):
            centre = None if locations is None else self._centre(record, locations)
            sample = self.crop(record, self._start(record["shape"][1:], centre))
            if centre is not None:
                for key in (self.image_key, self.label_key):
                    sample[key].meta["crop_center"] = np.asarray(centre, dtype=np.int64)
            samples.append(sample)
        return samples


class StoreVolumed(Transform):
    """A store record -> its datalist fields (``modality``, ...) with the item's image under ``key`` as the
    opened, still compressed blosc2 array (:func:`common.data.store.open_volume`): the transforms that follow
    slice it, and only the blocks of those slices are read. ``expect`` as :class:`RandStorePatchd`'s."""

    def __init__(self, key: str = "image", expect: Mapping | None = None) -> None:
        self.key = key
        self.expect = dict(expect or {})

    def __call__(self, record: Mapping) -> dict:
        _one_blosc2_thread_in_workers()
        return {**record.get("fields", {}), self.key: open_volume(record["image"])}


def store_records(manifest: str, on_bad_sample: str = "raise", data: Mapping | None = None) -> list[dict]:
    """The finished items of a store's manifest (file paths resolved; ``data``: the manifest if
    :func:`load_manifest` has read it already). Items that failed preprocessing stop here with
    ``on_bad_sample="raise"`` (naming each one's files and error) and are left out, logged, with ``"skip"``,
    the policy of :func:`common.data.validation.load_datalist`."""
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    data = load_manifest(manifest) if data is None else data
    failed = [f"{r['id']} {r.get('files')}: {r.get('error')}" for r in data["failed"]]
    if failed and on_bad_sample == "raise":
        raise ValueError(f"{manifest}: {len(failed)} item(s) failed preprocessing:\n  " + "\n  ".join(failed))
    for line in failed:
        logger.warning("on_bad_sample='skip': leaving out %s", line)
    if not data["items"]:
        raise ValueError(f"{manifest}: the store has no finished item, there is nothing to train on")
    return data["items"]


class PatchDataset(Dataset):
    """A MONAI ``Dataset`` over the items of a store: each item gives the crops of
    ``RandStorePatchd(**crop)`` (``roi_size``, ``mode``, ``num_samples``, ...) passed through ``transform``
    (the random transforms of today's pipelines)."""

    def __init__(
        self,
        manifest: str,
        transform: Callable | Sequence[Callable] | None = None,
        on_bad_sample: str = "raise",
        **crop,
    ) -> None:
        rest = [] if transform is None else [transform] if callable(transform) else list(transform)
        super().__init__(store_records(manifest, on_bad_sample), Compose([RandStorePatchd(**crop), *rest]))
