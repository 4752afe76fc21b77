"""Evaluation: segmentation metrics, baselines and figures."""

from .lesions import lesion_classification, lesion_patches
from .segmentation import dice_per_class, format_dice_table, save_overlay, trivial_dice

__all__ = [
    "dice_per_class",
    "format_dice_table",
    "lesion_classification",
    "lesion_patches",
    "save_overlay",
    "trivial_dice",
]
