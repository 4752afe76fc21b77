"""Transforms for partially labelled data (SuPreM pre-training, Li et al., ICLR 2024, Sec. 3).

Each datalist item names its ``source``; :class:`AnnotatedClassesd` turns the source's annotated classes
into a boolean vector the loss (:class:`common.losses.PartialLabelDiceCELoss`) and
:class:`MergeUnannotatedd` read. Merging folds a sample's unannotated classes into background before the
argmax, so metrics score each class only where its source annotates it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt

from ..data.partial_labels import annotated_mask
from .builders import segmentation_transforms


class AnnotatedClassesd(mt.MapTransform):
    """Add ``data[output_key]``: a bool tensor over ``class_names``, True where ``data[source_key]``'s
    source annotates the class (background always True).

    ``sources`` maps a source name to its annotated class names, or to ``{"annotated": [...], ...}`` as in
    a datalist's ``"sources"`` section.
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence[str] | Mapping],
        class_names: Sequence[str],
        source_key: str = "source",
        output_key: str = "annotated",
    ):
        super().__init__(keys=[source_key])
        self.masks = {
            name: torch.as_tensor(
                annotated_mask(entry["annotated"] if isinstance(entry, Mapping) else entry, class_names)
            )
            for name, entry in sources.items()
        }
        self.source_key, self.output_key = source_key, output_key

    def __call__(self, data):
        d = dict(data)
        where = d.get("image", "the item")
        if self.source_key not in d:
            raise KeyError(f"{where}: datalist item has no {self.source_key!r} key (keys: {sorted(d)})")
        source = d[self.source_key]
        if source not in self.masks:
            raise KeyError(f"{where}: unknown {self.source_key} {source!r}; known: {sorted(self.masks)}")
        d[self.output_key] = self.masks[source].clone()
        return d


class MergeUnannotatedd(mt.MapTransform):
    """Fold the probabilities of a sample's unannotated classes into background (channel 0).

    ``data[keys]`` is a (C, *spatial) probability map, ``data[annotated_key]`` a (C,) bool vector.
    """

    def __init__(self, keys, annotated_key: str = "annotated"):
        super().__init__(keys)
        self.annotated_key = annotated_key

    def __call__(self, data):
        d = dict(data)
        unannotated = ~torch.as_tensor(np.asarray(d[self.annotated_key])).bool().flatten()
        for key in self.key_iterator(d):
            probs = d[key].clone()
            if unannotated.numel() != probs.shape[0]:
                raise ValueError(
                    f"{key} has {probs.shape[0]} channels but {self.annotated_key} has {unannotated.numel()}"
                )
            unannotated = unannotated.to(probs.device)
            probs[0] += probs[unannotated].sum(0)
            probs[unannotated] = 0
            d[key] = probs
        return d


def partial_label_transforms(
    stage: str, sources: Mapping, class_names: Sequence[str], **segmentation_kwargs
) -> mt.Compose:
    """:func:`~common.transforms.segmentation_transforms` of ``stage`` preceded by
    :class:`AnnotatedClassesd` (one flat Compose, so a CacheDataset still caches the deterministic part)."""
    pipeline = segmentation_transforms(stage, **segmentation_kwargs).transforms
    at = 1 if segmentation_kwargs.get("data_source") == "store" else 0  # store fields come with the crops
    return mt.Compose([*pipeline[:at], AnnotatedClassesd(sources, class_names), *pipeline[at:]])
