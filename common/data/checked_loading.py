"""Content checks when an item is first read: the half of the datalist checks that needs the voxels.

:func:`common.data.load_datalist` checks headers only, so that start-up does not read every volume. What
only the voxels tell (a truncated file, NaN or infinite voxels, label values outside
``0 .. num_classes - 1``) is checked by :class:`CheckedLoadd`, which takes the place of a pipeline's
``LoadImaged``: it reads the item with that very loader (one file at a time, so that a read error names
its file), checks what was read, and hands it on. No file is read twice.

A bad item's message names the datalist file, the key, the item's index, the file and what is wrong, as
at start-up. The policy is the datalist's ``on_bad_sample``: ``"raise"`` raises at the first read (in a
``CacheDataset`` that is while the cache is filled; MONAI wraps the error in its "applying transform"
``RuntimeError``, whose cause is this message); ``"skip"`` logs the item and reads the next item of the
datalist in its place, at most ``max_substitutes`` times in a row. An item found bad is remembered by the
process and not read again. A cached dataset keeps the substitute in the bad item's slot, so that
substitute is drawn twice as often; an uncached one replaces the bad item at every draw.

MONAI has no such policy (a transform error stops the ``DataLoader``); the substitution is kept inside
the transform so that it works for every MONAI dataset, cached or not, without a wrapper.

In a train config (``train#dataset``)::

    "transform": "$common.data.with_content_check(@train#preprocessing, @train#dataset#data)"

Items that do not come from :func:`~common.data.load_datalist` (MONAI Label's datastore) leave the
transform as it is.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from monai.transforms import Compose, LoadImaged, MapTransform

from .validation import Datalist, check_dims, check_same_grid, check_voxels

logger = logging.getLogger(__name__)


class CheckedLoadd(MapTransform):
    """``loader`` (a ``LoadImaged``) followed by the content checks of ``datalist``'s settings and its
    ``on_bad_sample`` policy (see the module's docstring)."""

    def __init__(self, loader: LoadImaged, datalist: Datalist, max_substitutes: int = 10) -> None:
        super().__init__(loader.keys, allow_missing_keys=True)
        self.loader = copy.copy(loader)
        self.loader.allow_missing_keys = True  # read one key at a time
        self.datalist, self.max_substitutes = datalist, max_substitutes
        self.positions = {datalist.item_id(item): i for i, item in enumerate(datalist)}
        self.bad: set[tuple[str, str]] = set()  # items found bad by this process

    def read(self, item: Mapping) -> dict:
        """``item`` read by the loader and checked; ValueError naming the file otherwise."""
        d = dict(item)
        for key in self.key_iterator(d):
            path = str(item[key])
            try:
                d.update(self.loader({k: v for k, v in d.items() if k == key or k not in self.keys}))
            except Exception as err:  # readers raise EOFError, zlib, nibabel, ITK and RuntimeError errors
                raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err})") from err
            image = d[key]
            check_dims(path, image.shape[1:], self.datalist.spatial_dims, f", {image.shape[0]} channel(s)")
            is_label = key == self.datalist.label_key
            check_voxels(path, image.as_tensor(), self.datalist.num_classes if is_label else None)
        image_key, label_key = self.datalist.image_key, self.datalist.label_key
        if image_key in d and label_key in d and label_key in self.keys:
            grids = [(tuple(d[k].shape[1:]), np.asarray(d[k].affine)) for k in (image_key, label_key)]
            check_same_grid(item[image_key], grids[0], item[label_key], grids[1])
        return d

    def substitute(self, item: Mapping) -> dict | None:
        """The item after ``item`` in the datalist (cyclically) not known to be bad; None if none is left."""
        start = self.positions.get(self.datalist.item_id(item), -1)
        for step in range(1, len(self.datalist) + 1):
            candidate = self.datalist[(start + step) % len(self.datalist)]
            if self.datalist.item_id(candidate) not in self.bad:
                return candidate
        return None

    def __call__(self, data: Mapping) -> dict:
        item = data
        for _ in range(self.max_substitutes + 1):
            item_id = self.datalist.item_id(item)
            if item_id not in self.bad:
                try:
                    return self.read(item)
                except ValueError as err:
                    message = f"{self.datalist.origin(item)}: {err}"
                    if self.datalist.on_bad_sample == "raise":
                        raise ValueError(message) from err
                    logger.warning("on_bad_sample='skip': replacing %s", message)
                    self.bad.add(item_id)
            item = self.substitute(item)
            if item is None:
                raise ValueError(f"{self.datalist.origin(data)}: every sample of the datalist is bad")
        raise ValueError(
            f"{self.datalist.origin(data)}: it and the {self.max_substitutes} samples read in its place are "
            "all bad (on_bad_sample='skip'); check the datalist"
        )


def with_content_check(
    transform: Compose | Callable, datalist: Sequence, max_substitutes: int = 10
) -> Compose | Callable:
    """``transform`` with its first ``LoadImaged`` replaced by :class:`CheckedLoadd` for ``datalist``
    (the list :func:`common.data.load_datalist` returned, sliced or not). Items from elsewhere (MONAI
    Label's datastore replaces ``train#dataset#data`` with a plain list) carry no check settings:
    ``transform`` is returned as it is."""
    if not isinstance(datalist, Datalist):
        return transform
    pipeline = transform.flatten() if isinstance(transform, Compose) else Compose(transform)
    steps = list(pipeline.transforms)
    index = next((i for i, t in enumerate(steps) if isinstance(t, LoadImaged)), None)
    if index is None:
        raise ValueError(f"with_content_check: the transform has no LoadImaged to check ({steps})")
    steps[index] = CheckedLoadd(steps[index], datalist, max_substitutes)
    return Compose(
        steps,
        map_items=pipeline.map_items,
        unpack_items=pipeline.unpack_items,
        log_stats=pipeline.log_stats,
        lazy=pipeline.lazy,
        overrides=pipeline.overrides,
    )
