"""iBOT's masked patch-token self-distillation loss (Zhou et al. 2022, Sec. 3.2, ``L_MIM``).

For a view ``u`` with mask ``m`` (``m_i = 1``: token ``i`` was masked in the student's input ``u_hat``), the
online tokenizer (the teacher, unmasked input) gives ``P_t(u_i) = softmax((g_t(u)_i - c') / tau_t)``,
centred by its own patch centre ``c'`` and sharpened (:func:`sharpened_targets`), and the student
``P_s(u_hat_i) = softmax(g_s(u_hat)_i / tau_s)``:

    L_MIM = - sum_i m_i P_t(u_i)^T log P_s(u_hat_i) / max(1, sum_i m_i),

averaged over images, then over views (the normalisation of iBOT's code: unmasked tokens do not count, an
image without masked tokens adds 0). The patch centre follows DINO's rule (:func:`update_center_`) on the
mean of all teacher patch tokens. As :class:`~common.losses.dino.DINOLoss`, the loss keeps the targets'
mean entropy ``teacher_entropy`` (same weighting), so that ``loss - teacher_entropy`` is the mean KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dino import entropy, sharpened_targets, update_center_


def masked_token_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean over images of the mean of ``values`` ``(B, N)`` over each image's masked tokens (an image
    without masked tokens counts 0)."""
    return ((values * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)).mean()


class IBOTPatchLoss(nn.Module):
    """``forward(student_patches, teacher_patches, masks, teacher_temp)``: lists with one entry per view of
    ``(B, N, K)`` logits and ``(B, N)`` token masks (true: masked in the student's view)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(out_dim))
        self.teacher_entropy = torch.tensor(float("nan"))

    def forward(
        self,
        student_patches: list[torch.Tensor],
        teacher_patches: list[torch.Tensor],
        masks: list[torch.Tensor],
        teacher_temp: float,
    ) -> torch.Tensor:
        if not len(student_patches) == len(teacher_patches) == len(masks) > 0:
            raise ValueError("iBOT's patch loss needs one student output, teacher output and mask per view")
        terms, entropies = [], []
        for student, teacher, mask in zip(student_patches, teacher_patches, masks, strict=True):
            target = sharpened_targets(teacher, self.center, teacher_temp)
            token_loss = -(target * F.log_softmax(student / self.student_temp, dim=-1)).sum(-1)
            weight = mask.to(token_loss.dtype)
            terms.append(masked_token_mean(token_loss, weight))
            entropies.append(masked_token_mean(entropy(target), weight))
        loss = torch.stack(terms).mean()
        self.teacher_entropy = torch.stack(entropies).mean()
        update_center_(self.center, torch.cat(teacher_patches).flatten(0, -2), self.center_momentum)
        return loss
