"""Overlap metric of DINOv2-radiology's segmentation results: the mean of Dice and Jaccard (papers/004,
Sec. 4: "the average of the dice and jaccard scores as a metric for segmentation").

For a class with predicted mask ``P`` and label mask ``L`` of one image,

    Dice = 2 |P ∩ L| / (|P| + |L|),    Jaccard = |P ∩ L| / |P ∪ L|,    score = (Dice + Jaccard) / 2.

A class absent from both the prediction and the label of an image has no defined score (NaN) and is left
out of every mean; a class absent from the label but predicted scores 0 (false positives count). Scores
are averaged over images per class (skipping NaN), then over classes (skipping classes NaN in every
image). :func:`dice_jaccard` computes this for one batch; :class:`DiceJaccardMetric` accumulates it over an
evaluation (a MONAI ``CumulativeIterationMetric``) and :class:`DiceJaccardHandler` reports it in an Ignite
engine, as a bundle's ``key_val_metric``::

    "key_val_metric": {"val_dice_jaccard": {
        "_target_": "common.evaluation.overlap.DiceJaccardHandler",
        "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}}

which also writes ``val_dice_jaccard_dice`` and ``val_dice_jaccard_jaccard`` to ``engine.state.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import ignore_background


def per_image_scores(
    pred_onehot: torch.Tensor, label_onehot: torch.Tensor, include_background: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and Jaccard of every image and class: two ``(B, K)`` tensors (``K - 1`` classes without the
    background channel 0), NaN where a class is absent from both prediction and label.

    Both inputs are binary one-hot tensors ``(B, K, *spatial)`` of one shape.
    """
    if pred_onehot.shape != label_onehot.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_onehot.shape)} differs from label shape "
            f"{tuple(label_onehot.shape)} (both must be one-hot (B, K, *spatial))"
        )
    if pred_onehot.ndim < 3:
        raise ValueError(f"expected one-hot (B, K, *spatial) tensors, got shape {tuple(pred_onehot.shape)}")
    if not include_background:
        pred_onehot, label_onehot = ignore_background(pred_onehot, label_onehot)
    pred, label = pred_onehot.float(), label_onehot.float()
    spatial = tuple(range(2, pred.ndim))
    intersection = (pred * label).sum(spatial)
    total = pred.sum(spatial) + label.sum(spatial)
    union = total - intersection
    nan = torch.tensor(float("nan"), device=pred.device)
    dice = torch.where(total > 0, 2 * intersection / total, nan)
    jaccard = torch.where(union > 0, intersection / union, nan)
    return dice, jaccard


def summarise(dice: torch.Tensor, jaccard: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class and mean scores from per-image ``(N, K)`` Dice and Jaccard (NaN = class absent from both
    masks): ``dice_per_class``, ``jaccard_per_class`` and ``dice_jaccard_per_class`` ``(K,)`` (means over
    images), ``dice``, ``jaccard`` and ``dice_jaccard_mean = (dice + jaccard) / 2`` (means over classes);
    NaN where nothing is defined."""
    dice_per_class, jaccard_per_class = dice.nanmean(0), jaccard.nanmean(0)
    mean_dice, mean_jaccard = dice_per_class.nanmean(), jaccard_per_class.nanmean()
    return {
        "dice_per_class": dice_per_class,
        "jaccard_per_class": jaccard_per_class,
        "dice_jaccard_per_class": (dice_per_class + jaccard_per_class) / 2,
        "dice": mean_dice,
        "jaccard": mean_jaccard,
        "dice_jaccard_mean": (mean_dice + mean_jaccard) / 2,
    }


def dice_jaccard(
    pred_onehot: torch.Tensor, label_onehot: torch.Tensor, include_background: bool = False
) -> dict[str, torch.Tensor]:
    """Dice, Jaccard and their mean, per class and averaged (:func:`summarise`), for one batch of binary
    one-hot masks ``(B, K, *spatial)``. Classes absent from both the prediction and the label of an image
    are excluded from the means for that image."""
    return summarise(*per_image_scores(pred_onehot, label_onehot, include_background))


class DiceJaccardMetric(CumulativeIterationMetric):
    """Per-image Dice and Jaccard accumulated over iterations; :meth:`aggregate` gives
    ``dice_jaccard_mean`` over everything seen since :meth:`reset` (:func:`summarise`), :meth:`summary`
    the whole dictionary. Inputs: binary one-hot ``(B, K, *spatial)`` tensors, or lists of
    ``(K, *spatial)`` tensors."""

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        self.include_background = include_background

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return per_image_scores(y_pred, y, self.include_background)

    def summary(self) -> dict[str, torch.Tensor]:
        """:func:`summarise` of every image accumulated so far."""
        buffers = self.get_buffer()
        if buffers is None:
            raise RuntimeError("DiceJaccardMetric has no scores yet: call it on predictions first")
        return summarise(*buffers)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        return self.summary()["dice_jaccard_mean"]


class DiceJaccardHandler(IgniteMetricHandler):
    """Ignite metric of the mean of Dice and Jaccard (:class:`DiceJaccardMetric`), for ``key_val_metric``
    or ``additional_metrics``. Under its name ``<name>`` it records ``dice_jaccard_mean``; it also writes
    ``<name>_dice`` and ``<name>_jaccard`` to ``engine.state.metrics``. With ``save_details`` the per-image,
    per-class scores go to ``engine.state.metric_details`` under the same three names."""

    def __init__(
        self,
        include_background: bool = False,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=DiceJaccardMetric(include_background),
            output_transform=output_transform,
            save_details=save_details,
        )

    def compute(self) -> float:
        result = super().compute()
        if self._engine is not None and self._name is not None:
            summary = self.metric_fn.summary()
            for key in ("dice", "jaccard"):
                self._engine.state.metrics[f"{self._name}_{key}"] = summary[key].item()
            if self.save_details:
                dice, jaccard = self._engine.state.metric_details[self._name]
                self._engine.state.metric_details.update(
                    {
                        self._name: (dice + jaccard) / 2,
                        f"{self._name}_dice": dice,
                        f"{self._name}_jaccard": jaccard,
                    }
                )
        return result
