"""Exponential moving average of weights (the momentum / mean teacher of MoCo, BYOL, DINO, iBOT, SMIT).

DINO (Caron et al. 2021, Sec. 3.1): ``theta_t <- lambda * theta_t + (1 - lambda) * theta_s``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter becomes ``momentum * teacher + (1 - momentum) * student``.

    Buffers (batch-norm statistics) are copied from the student. The two modules must have the same
    parameter names and shapes.
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters")
    t = [t_params[k].data for k in t_params]
    s = [s_params[k].data for k in t_params]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        t_buf.data.copy_(s_buf.data)
