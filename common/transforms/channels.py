"""Channel adaptation: any image (grayscale, RGB, MONOCHROME1 radiograph, CT, MRI) to a network's channels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

PHOTOMETRIC_TAGS = ("0028|0004", "PhotometricInterpretation")


def photometric_interpretation(image) -> str | None:
    """The DICOM photometric interpretation recorded in a MetaTensor's meta data, if any."""
    meta = getattr(image, "meta", {}) or {}
    for tag in PHOTOMETRIC_TAGS:
        if tag in meta:
            value = meta[tag]
            return str(value[0] if isinstance(value, (list, tuple)) else value).strip()
    return None


def adapt_channels(image: torch.Tensor, out_channels: int, invert: bool = False) -> torch.Tensor:
    """Map a channel-first image to ``out_channels`` channels.

    One channel is repeated to ``out_channels``; RGB(A) is averaged to gray when one channel is wanted;
    otherwise the channel count must already match. ``invert`` flips intensities within their range
    (MONOCHROME1 radiographs store bright air, the opposite of the MONOCHROME2 convention networks see).
    """
    if invert:
        image = image.max() + image.min() - image
    channels = image.shape[0]
    if channels == out_channels:
        return image
    if channels == 1:
        return image.repeat(out_channels, *([1] * (image.ndim - 1)))
    if out_channels == 1 and channels in (3, 4):
        return image[:3].mean(dim=0, keepdim=True)
    raise ValueError(f"cannot adapt an image with {channels} channels to {out_channels} channels")


class AdaptChannelsd(MapTransform):
    """Dictionary transform around :func:`adapt_channels`; MONOCHROME1 images are inverted automatically."""

    def __init__(self, keys: KeysCollection, out_channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.out_channels = out_channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            invert = photometric_interpretation(image) == "MONOCHROME1"
            try:
                out = adapt_channels(torch.as_tensor(image), self.out_channels, invert=invert)
            except ValueError as err:
                source = getattr(image, "meta", {}).get("filename_or_obj", "<in memory>")
                raise ValueError(f"{source} (key {key!r}): {err}") from err
            if isinstance(image, MetaTensor):
                out = MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
            d[key] = out
        return d
