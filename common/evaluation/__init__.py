"""Evaluation: segmentation metrics (Dice, Dice + Jaccard), baselines and figures, lesion classification,
classification protocols on frozen encoders (kNN, linear, few-shot), statistics, CKA."""

from . import protocols
from .cka import collect_features, layerwise_cka, linear_cka, plot_cka
from .fewshot import fewshot_splits, run_fewshot_linear
from .lesions import lesion_classification, lesion_patches
from .overlap import DiceJaccardHandler, DiceJaccardMetric, dice_jaccard
from .probes import accuracy, auroc, extract_features, knn_predict, linear_probe, mean_auroc
from .protocols import run_probes
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
    "DiceJaccardHandler",
    "DiceJaccardMetric",
    "accuracy",
    "auroc",
    "dice_jaccard",
    "extract_features",
    "fewshot_splits",
    "knn_predict",
    "linear_probe",
    "mean_auroc",
    "protocols",
    "run_fewshot_linear",
    "run_probes",
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
