"""Dimension-agnostic transforms: pipelines for 2D and 3D images, channel adaptation, self-supervised views
and masks."""

from .builders import INTENSITY_MODES, intensity_transform, load_transforms, segmentation_transforms
from .channels import AdaptChannelsd, adapt_channels, photometric_interpretation
from .embeddings import SaveEmbeddingd
from .masking import random_block_mask, upsample_mask
from .ssl import MultiCropd, NormalizeByModalityd, embedding_transforms, pool_transforms, ssl_transforms

__all__ = [
    "INTENSITY_MODES",
    "AdaptChannelsd",
    "MultiCropd",
    "NormalizeByModalityd",
    "SaveEmbeddingd",
    "adapt_channels",
    "embedding_transforms",
    "intensity_transform",
    "load_transforms",
    "photometric_interpretation",
    "pool_transforms",
    "random_block_mask",
    "segmentation_transforms",
    "ssl_transforms",
    "upsample_mask",
]
