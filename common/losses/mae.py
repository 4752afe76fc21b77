"""MAE's reconstruction loss (He et al. 2022, Sec. 3, "Reconstruction target"): the mean squared error
between predicted and original voxels, computed on masked patches only,

    L = sum_n m_n * mean_p (y_np - t_np)^2 / sum_n m_n,

where ``n`` runs over the patches of every sample, ``p`` over the ``P`` values of a patch and ``m_n`` is 1
for a masked patch. With ``norm_pix`` (the paper's best setting, Table 1d "w/ norm") the target of each
patch is normalised by its own mean and standard deviation, ``t_np = (x_np - mu_n) / sqrt(var_n + 1e-6)``,
with the unbiased variance of the reference code (``torch.var``).
"""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, N, patch**D * C)`` for ``D`` = 2 or 3 spatial axes.

    Patches are numbered in C order over the patch grid (the order of ``tokens(feature_map)``), and the
    values of a patch in C order over ``(*offsets, channel)`` (MAE's ``nchpwq -> nhwpqc``).
    """
    b, c, *spatial = x.shape
    if len(spatial) not in (2, 3) or any(s % patch for s in spatial):
        raise ValueError(f"input spatial shape {tuple(spatial)} is not a 2D/3D multiple of patch {patch}")
    grid = [s // patch for s in spatial]
    d = len(spatial)
    x = x.reshape(b, c, *[v for g in grid for v in (g, patch)])
    # axes: 0 batch, 1 channel, then (grid_i, offset_i) pairs at 2 + 2i, 3 + 2i
    order = [0, *(2 + 2 * i for i in range(d)), *(3 + 2 * i for i in range(d)), 1]
    return x.permute(order).reshape(b, -1, patch**d * c)


def mae_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """``pred``, ``target``: ``(B, N, P)`` per-patch values; ``mask``: ``(B, N)``, true where masked."""
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)
