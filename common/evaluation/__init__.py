"""Evaluation: segmentation metrics, baselines and figures."""

from .segmentation import dice_per_class, format_dice_table, save_overlay, trivial_dice

__all__ = ["dice_per_class", "format_dice_table", "save_overlay", "trivial_dice"]
