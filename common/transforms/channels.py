"""Channel adaptation: any image (grayscale, RGB, MONOCHROME1 radiograph, CT, MRI) to a network's channels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

# Where readers record DICOM's photometric interpretation (0028,0004), and whether the pixels they return
# are still as stored. ITK's GDCM reader (MONAI's ITKReader) already inverts MONOCHROME1 pixel data while
# keeping the tag; pydicom (MONAI's PydicomReader, with ``prune_metadata=False``) returns the stored pixels
# and the tag in DICOM JSON form; ``PhotometricInterpretation`` is the keyword form of any other source.
ITK_TAG = "0028|0004"
RAW_PIXEL_TAGS = ("00280004", "PhotometricInterpretation")
DICOM_SUFFIXES = (".dcm", ".dicom")


def _tag_value(value) -> str:
    if isinstance(value, dict):  # DICOM JSON: {"vr": "CS", "Value": ["MONOCHROME1"]}
        value = value.get("Value", [""])
    return str(value[0] if isinstance(value, (list, tuple)) else value).strip()


def _header_interpretation(filename: str) -> str | None:
    """The photometric interpretation in a DICOM file's header (pydicom, pixel data not read)."""
    import pydicom  # only reached for a DICOM file that a non-ITK reader (pydicom) has read

    header = pydicom.dcmread(filename, stop_before_pixels=True, specific_tags=["PhotometricInterpretation"])
    return str(header.get("PhotometricInterpretation", "")).strip() or None


def photometric_interpretation(image) -> str | None:
    """The DICOM photometric interpretation recorded in a MetaTensor's meta data, if any (ITK or DICOM JSON
    key, or the keyword)."""
    meta = getattr(image, "meta", {}) or {}
    for tag in (ITK_TAG, *RAW_PIXEL_TAGS):
        if tag in meta:
            return _tag_value(meta[tag])
    return None


def stored_as_monochrome1(image) -> bool:
    """Whether ``image`` holds MONOCHROME1 pixels as stored (bright air), which must be inverted.

    Decided by the reader that loaded it, since MONAI may pick either for a ``.dcm`` file: ITK (its tag key
    ``0028|0004``) has already inverted the pixels, so never; pydicom returns them as stored: MONOCHROME1 by
    its tag, or, when ``PydicomReader`` pruned the tag from the meta data (its default), by the file header.
    """
    meta = getattr(image, "meta", {}) or {}
    if ITK_TAG in meta:
        return False
    interpretation = photometric_interpretation(image)
    filename = str(meta.get("filename_or_obj", ""))
    if interpretation is None and filename.lower().endswith(DICOM_SUFFIXES) and Path(filename).is_file():
        interpretation = _header_interpretation(filename)
    return interpretation == "MONOCHROME1"


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
    """Dictionary transform around :func:`adapt_channels`; MONOCHROME1 pixels as stored are inverted
    automatically, once, whichever reader loaded them (:func:`stored_as_monochrome1`)."""

    def __init__(self, keys: KeysCollection, out_channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.out_channels = out_channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            invert = stored_as_monochrome1(image)
            try:
                out = adapt_channels(torch.as_tensor(image), self.out_channels, invert=invert)
            except ValueError as err:
                source = getattr(image, "meta", {}).get("filename_or_obj", "<in memory>")
                raise ValueError(f"{source} (key {key!r}): {err}") from err
            if isinstance(image, MetaTensor):
                out = MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
            d[key] = out
        return d
