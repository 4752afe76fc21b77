"""Dimension-agnostic transforms: pipelines for 2D and 3D images, channel adaptation, self-supervised views
and masks."""

from .builders import (
    INTENSITY_MODES,
    classification_transforms,
    intensity_transform,
    load_transforms,
    segmentation_transforms,
)
from .channels import AdaptChannelsd, adapt_channels, photometric_interpretation, stored_as_monochrome1
from .cutout import cutout, random_cutout_mask
from .dims import EnsureSpatialDimsd, SpatialDimsError
from .embeddings import SaveEmbeddingd
from .genesis import ModelsGenesisd, genesis_transforms
from .masking import random_block_mask, upsample_mask
from .partial_labels import AnnotatedClassesd, MergeUnannotatedd, partial_label_transforms
from .radiographs import BoxPatchd, coda_transforms, leader_transforms
from .rotation import all_rotations, random_rotation_labels, rotate_batch
from .ssl import MultiCropd, NormalizeByModalityd, embedding_transforms, pool_transforms, ssl_transforms

__all__ = [
    "INTENSITY_MODES",
    "AdaptChannelsd",
    "AnnotatedClassesd",
    "BoxPatchd",
    "EnsureSpatialDimsd",
    "MergeUnannotatedd",
    "ModelsGenesisd",
    "MultiCropd",
    "NormalizeByModalityd",
    "SaveEmbeddingd",
    "SpatialDimsError",
    "adapt_channels",
    "all_rotations",
    "classification_transforms",
    "coda_transforms",
    "cutout",
    "embedding_transforms",
    "genesis_transforms",
    "intensity_transform",
    "leader_transforms",
    "load_transforms",
    "partial_label_transforms",
    "photometric_interpretation",
    "stored_as_monochrome1",
    "pool_transforms",
    "random_block_mask",
    "random_cutout_mask",
    "random_rotation_labels",
    "rotate_batch",
    "segmentation_transforms",
    "ssl_transforms",
    "upsample_mask",
]
