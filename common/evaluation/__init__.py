"""Evaluation: segmentation metrics, baselines and figures, lesion classification, statistics, CKA."""

from .cka import collect_features, layerwise_cka, linear_cka, plot_cka
from .lesions import lesion_classification, lesion_patches
from .segmentation import dice_per_class, format_dice_table, save_overlay, trivial_dice
from .stats import (
    bootstrap_ci,
    compare_methods,
    mean_sd,
    paired_bootstrap_ci,
    significance_marker,
    t_test_independent,
    t_test_paired,
    wilcoxon_signed_rank,
)

__all__ = [
    "bootstrap_ci",
    "collect_features",
    "compare_methods",
    "layerwise_cka",
    "linear_cka",
    "mean_sd",
    "paired_bootstrap_ci",
    "plot_cka",
    "significance_marker",
    "t_test_independent",
    "t_test_paired",
    "wilcoxon_signed_rank",
    "dice_per_class",
    "format_dice_table",
    "lesion_classification",
    "lesion_patches",
    "save_overlay",
    "trivial_dice",
]
