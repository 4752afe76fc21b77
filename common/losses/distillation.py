"""LeADER's distillation similarity ``l_s`` (papers/001, Eq. 1-2): the distance between a frozen teacher's
embedding ``E`` and the student head's ``E'``.

- ``mse`` (the paper's choice, Sec. 3): ``mean((E - E')^2)`` over batch and dimensions;
- ``cosine``: ``mean(1 - cos(E, E'))`` over the batch;
- ``cross_entropy`` (the paper's ablation, Fig. 10): ``-sum softmax(E / T) * log_softmax(E' / T)`` averaged
  over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILLATION_LOSSES = ("mse", "cosine", "cross_entropy")


def distillation_loss(
    teacher: torch.Tensor, student: torch.Tensor, kind: str = "mse", temperature: float = 1.0
) -> torch.Tensor:
    """``l_s(E, E')`` for ``(B, D)`` teacher and student embeddings; the teacher gets no gradient."""
    if kind not in DISTILLATION_LOSSES:
        raise ValueError(f"unknown distillation loss {kind!r}; choose one of {DISTILLATION_LOSSES}")
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} shapes differ")
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    targets = F.softmax(teacher / temperature, dim=-1)
    return -(targets * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean()
