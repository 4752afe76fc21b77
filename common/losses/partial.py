"""Dice + cross-entropy for partially labelled segmentation (SuPreM pre-training).

SuPreM (Li et al., ICLR 2024, Sec. 3) unifies sources that annotate different subsets of one class list.
A voxel a source labels 0 is background *or* any class that source does not annotate, so the network's
probability mass on unannotated classes must not be penalised there. Following the marginal loss of
Shi et al. (MedIA 2021, Eq. 3), per sample the background absorbs the unannotated classes:

    q_0 = p_0 + sum_{c not annotated} p_c,    q_c = p_c (c annotated),    p = softmax(logits)

and the loss is taken over the annotated classes only:

    L_CE   = -mean_voxels log q_{y(v)}                              (y(v) the voxel's label)
    L_Dice = mean_{(b, c) annotated} [1 - (2 sum_v q_c g_c + eps) / (sum_v q_c + sum_v g_c + eps)]

``L = lambda_dice * L_Dice + lambda_ce * L_CE``. With every class annotated it is MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True)``.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_annotated(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    annotated = torch.as_tensor(annotated, device=logits.device).bool()
    if annotated.shape != logits.shape[:2]:
        raise ValueError(
            f"annotated has shape {tuple(annotated.shape)}; "
            f"expected (batch, classes) = {tuple(logits.shape[:2])}"
        )
    if not annotated[:, 0].all():
        raise ValueError("annotated[:, 0] (background) must be True for every sample")
    return annotated


def merged_log_probs(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """log q of the module docstring, shape (B, C, *spatial): unannotated classes are folded into the
    background channel and get ``-inf``."""
    annotated = _check_annotated(logits, annotated)
    broadcast = annotated.view(*annotated.shape, *([1] * (logits.ndim - 2)))
    log_p = logits.float().log_softmax(dim=1)
    absorbed = ~broadcast
    absorbed[:, 0] = True
    background = torch.logsumexp(log_p.masked_fill(~absorbed, float("-inf")), dim=1, keepdim=True)
    return torch.cat([background, log_p[:, 1:].masked_fill(~broadcast[:, 1:], float("-inf"))], dim=1)


class PartialLabelDiceCELoss(nn.Module):
    """Marginal Dice + CE over each sample's annotated classes (see the module docstring).

    Args:
        include_background: count the (merged) background channel in the Dice term.
        batch: sum Dice numerators and denominators over the batch (per class, over the samples that
            annotate it) before dividing, as MONAI's ``batch=True``.
        lambda_dice, lambda_ce: weights of the two terms.
        smooth: ``eps`` in the Dice ratio (MONAI's ``smooth_nr = smooth_dr``).

    ``forward(logits, target, annotated)``: logits (B, C, *spatial), target (B, 1, *spatial) class indices,
    annotated (B, C) booleans (background True). When a training engine calls ``loss(pred, label)``,
    :class:`common.engines.AnnotatedClassesHandler` sets :attr:`annotated` from the batch first.
    """

    def __init__(
        self,
        include_background: bool = True,
        batch: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth: float = 1e-5,
    ):
        super().__init__()
        self.include_background = include_background
        self.batch = batch
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.smooth = smooth
        self.annotated: torch.Tensor | None = None

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None
    ) -> torch.Tensor:
        annotated = self.annotated if annotated is None else annotated
        if annotated is None:
            raise ValueError(
                "PartialLabelDiceCELoss needs the annotated classes of each sample: pass annotated=, or "
                "attach common.engines.AnnotatedClassesHandler to the trainer"
            )
        annotated = _check_annotated(logits, annotated)
        labels = target.long().squeeze(1) if target.ndim == logits.ndim else target.long()
        num_classes = logits.shape[1]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"label values must lie in [0, {num_classes - 1}]; got {labels.unique().tolist()}"
            )
        onehot = nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()
        present = onehot.flatten(2).sum(-1) > 0
        if (present & ~annotated).any():
            b, c = (present & ~annotated).nonzero()[0].tolist()
            raise ValueError(f"sample {b} has voxels of class {c}, which its annotated classes exclude")
        log_q = merged_log_probs(logits, annotated)
        ce = -log_q.gather(1, labels.unsqueeze(1)).mean()
        return self.lambda_dice * self._dice(log_q.exp(), onehot, annotated) + self.lambda_ce * ce

    def _dice(self, q: torch.Tensor, onehot: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, q.ndim))
        intersection, total = (q * onehot).sum(dims), (q + onehot).sum(dims)  # (B, C)
        if not self.include_background:
            intersection, total, annotated = intersection[:, 1:], total[:, 1:], annotated[:, 1:]
        weight = annotated.float()
        if self.batch:
            intersection, total = (intersection * weight).sum(0), (total * weight).sum(0)
            loss = 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)
            counted = annotated.any(0)
            return loss[counted].mean() if counted.any() else loss.sum() * 0.0
        loss = 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)
        return torch.where(annotated, loss, 0.0).sum() / weight.sum().clamp_min(1.0)
