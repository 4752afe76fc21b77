"""SimMIM's reconstruction loss (Xie et al. 2022, Sec. 3.4, Eq. 1): the l1 distance between predicted and
original voxel values over the masked voxels only,

    L = 1 / (Omega(x_M) * C) * sum_{masked} |y - x|,

with ``Omega(x_M)`` the number of masked voxels and ``C`` the channels.
"""

from __future__ import annotations

import torch


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pred``, ``target``: ``(B, C, *spatial)``; ``mask``: ``(B, *spatial)``, true where masked."""
    if pred.shape != target.shape or mask.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(
            f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    weight = mask.unsqueeze(1).to(pred.dtype)
    return ((pred - target).abs() * weight).sum() / (weight.sum() * pred.shape[1]).clamp_min(1e-6)
