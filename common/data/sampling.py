"""Sampling by source: a training list that mixes datasets, each drawn with a stated weight.

Foundation-model pre-training mixes public datasets of very different sizes (VoCo's 10 CT sets range from
a few dozen volumes to thousands; SuPreM's AbdomenAtlas joins 16). VoCo balances them by repeating the
small sets in its list; here each source gets a weight instead, and an item of source ``s`` is drawn with
probability ``w_s / (n_s * sum_t w_t)``, so that source ``s`` makes up ``w_s / sum_t w_t`` of the draws
whatever its size ``n_s`` (with replacement, as ``torch.utils.data.WeightedRandomSampler``). A source's
name is the item's ``key`` field (``"source"`` by default; ``"modality"`` balances CT against MR), read
from a datalist item or from a store record's datalist ``fields``.

The train configs that read a datalist or a store build their loader's sampler with :func:`train_sampler`
from two settings: ``sampling_weights`` (``null``: every item equally often, today's shuffle) and
``sampling_key``, e.g. ``--sampling_weights "{'AbdomenAtlas': 3, 'TotalSegmentator': 1}"``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from monai.data import DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import Dataset, RandomSampler, Sampler, WeightedRandomSampler

logger = logging.getLogger(__name__)


def item_source(item: Mapping, key: str, index: int) -> str:
    """``item[key]``, or ``item["fields"][key]`` for a store record; KeyError naming the item otherwise."""
    fields = item.get("fields", {})
    if key in item:
        return str(item[key])
    if key in fields:
        return str(fields[key])
    keys = sorted(item) + [f"fields#{k}" for k in sorted(fields)]
    raise KeyError(
        f"sampling_weights: item {index} ({item.get('image', 'no image')}) has no {key!r} field to weight it "
        f"by (sampling_key {key!r}); its keys: {keys}"
    )


def source_item_weights(
    items: Sequence[Mapping], weights: Mapping[str, float], key: str = "source"
) -> list[float]:
    """The weight of each item, ``weights[source] / (number of items of that source)``.

    ValueError when a source of ``items`` has no weight (a weight of 0 leaves a source out), when
    ``weights`` names a source no item has (a misspelt name), or when a weight is negative or all are 0.
    """
    sources = [item_source(item, key, index) for index, item in enumerate(items)]
    counts = Counter(sources)
    unweighted = sorted(set(counts) - set(weights))
    if unweighted:
        raise ValueError(
            f"sampling_weights: no weight for the {key!r} value(s) {unweighted} (weights given for "
            f"{sorted(weights)}); give each a weight, 0 to leave it out"
        )
    absent = sorted(set(weights) - set(counts))
    if absent:
        raise ValueError(f"sampling_weights: no item has {key!r} {absent}; the data has {sorted(counts)}")
    negative = {name: w for name, w in weights.items() if not float(w) >= 0}
    if negative or not any(float(w) > 0 for w in weights.values()):
        raise ValueError(f"sampling_weights must be >= 0 and not all 0, got {dict(weights)}")
    total = sum(float(w) for w in weights.values())
    logger.info(
        "sampling by %r: %s",
        key,
        ", ".join(
            f"{name} {float(weights[name]) / total:.0%} of draws ({counts[name]} of {len(sources)} items)"
            for name in counts
        ),
    )
    return [float(weights[source]) / counts[source] for source in sources]


def train_sampler(
    dataset: Dataset,
    weights: Mapping[str, float] | None = None,
    key: str = "source",
    distributed: bool = False,
) -> Sampler:
    """The sampler of a training loader over ``dataset`` (a MONAI dataset; its ``data`` are the items).

    Without ``weights``: ``RandomSampler`` (what ``shuffle=True`` builds), or MONAI's
    ``DistributedSampler(even_divisible=True, shuffle=True)`` with ``distributed``. With ``weights``:
    ``WeightedRandomSampler`` over :func:`source_item_weights`, ``len(dataset)`` draws an epoch, or MONAI's
    ``DistributedWeightedRandomSampler``, whose processes each draw from their shard by the same item
    weights (each shard's mix approaches the stated one as the shards grow).
    """
    if weights is None:
        return (
            DistributedSampler(dataset, even_divisible=True, shuffle=True)
            if distributed
            else RandomSampler(dataset)
        )
    item_weights = source_item_weights(dataset.data, weights, key)
    if distributed:
        return DistributedWeightedRandomSampler(dataset, item_weights, even_divisible=True)
    return WeightedRandomSampler(item_weights, num_samples=len(item_weights), replacement=True)
