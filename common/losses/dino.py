"""DINO's self-distillation loss (Caron et al. 2021, Sec. 3.1, Eq. 1-4, Alg. 1).

The teacher's output for a global view is centred and sharpened, ``P_t = softmax((g_t - c) / tau_t)``; the
student's for every view is ``P_s = softmax(g_s / tau_s)``; the loss is the cross-entropy
``H(P_t, P_s) = -sum_k P_t[k] log P_s[k]`` averaged over the batch, summed over all pairs (teacher global
view ``i``, student view ``v``) with ``v != i`` and divided by the number of pairs (Eq. 2-3; the division is
DINO's code). After the loss the centre moves to the teacher outputs' batch mean,
``c <- m c + (1 - m) mean(g_t)`` (Eq. 4), the mean taken over every rank when training is distributed.

Collapse monitor (Sec. 5.3, Fig. 7): the cross-entropy splits as ``H(P_t, P_s) = h(P_t) + KL(P_t || P_s)``.
After each call the loss keeps ``teacher_entropy``, the mean ``h(P_t)`` over the same pairs, so that
``loss - teacher_entropy`` is the mean KL, the part the student can lower: the cross-entropy alone can rise
while the student learns (the targets flatten as the centre catches up), the KL falls.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def update_center_(center: torch.Tensor, teacher_rows: torch.Tensor, momentum: float) -> None:
    """In place: ``center <- momentum * center + (1 - momentum) * mean(teacher_rows)``.

    ``teacher_rows``: ``(M, K)``; the mean is over the rows of every rank (``all_reduce``) when
    ``torch.distributed`` is initialised (DINO, Alg. 1 and ``update_center``).
    """
    total = teacher_rows.detach().to(center.dtype).sum(0)
    count = torch.tensor(float(teacher_rows.shape[0]), device=center.device, dtype=center.dtype)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    center.mul_(momentum).add_(total / count, alpha=1.0 - momentum)


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """``h(p) = -sum_k p[k] log p[k]`` over the last axis (``0 log 0 = 0``)."""
    return -torch.special.xlogy(probabilities, probabilities).sum(-1)


def sharpened_targets(
    teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float
) -> torch.Tensor:
    """The teacher's centred and sharpened distribution ``softmax((g_t - c) / tau_t)`` over the last axis,
    without gradient (Sec. 3.1: centring prevents one dimension from dominating, sharpening with a low
    ``tau_t`` from a uniform collapse)."""
    with torch.no_grad():
        return F.softmax((teacher_logits - center) / teacher_temp, dim=-1)


class DINOLoss(nn.Module):
    """``forward(student_outputs, teacher_outputs, teacher_temp)``: lists of ``(B, K)`` logits, one per
    view. Student view ``i`` must be the same crop as teacher view ``i`` for ``i`` < number of teacher
    views (the global views first, then the local ones), so that the pairs ``v == i`` are left out; with
    ``exclude_same_view=False`` every pair counts (Coda's intra-organ branch, whose teacher sees the full
    image and whose student sees only crops of it)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(out_dim))
        self.teacher_entropy = torch.tensor(float("nan"))

    def forward(
        self,
        student_outputs: list[torch.Tensor],
        teacher_outputs: list[torch.Tensor],
        teacher_temp: float,
        exclude_same_view: bool = True,
    ) -> torch.Tensor:
        targets = [sharpened_targets(t, self.center, teacher_temp) for t in teacher_outputs]
        log_probs = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_outputs]
        pairs = [
            (i, v)
            for i in range(len(targets))
            for v in range(len(log_probs))
            if v != i or not exclude_same_view
        ]
        if not pairs:
            raise ValueError("DINO's loss needs at least one (teacher view, other student view) pair")
        loss = torch.stack([-(targets[i] * log_probs[v]).sum(-1).mean() for i, v in pairs]).mean()
        entropies = [entropy(target).mean() for target in targets]
        self.teacher_entropy = torch.stack([entropies[i] for i, _ in pairs]).mean()
        update_center_(self.center, torch.cat(teacher_outputs), self.center_momentum)
        return loss
