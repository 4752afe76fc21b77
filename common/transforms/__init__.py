"""Dimension-agnostic transforms: pipelines for 2D and 3D images and channel adaptation."""

from .builders import INTENSITY_MODES, intensity_transform, load_transforms, segmentation_transforms
from .channels import AdaptChannelsd, adapt_channels, photometric_interpretation

__all__ = [
    "INTENSITY_MODES",
    "AdaptChannelsd",
    "adapt_channels",
    "intensity_transform",
    "load_transforms",
    "photometric_interpretation",
    "segmentation_transforms",
]
