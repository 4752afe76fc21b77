"""Random block masks for masked image modelling in 2D and 3D (SimMIM, Xie et al. 2022, Sec. 3.2).

A mask is drawn on a coarse grid of ``block``-sized cells (SimMIM's "mask patch size" in units of model
patches) with exactly ``ratio * cells`` cells (rounded half up) masked per sample, then expanded to the
model's patch grid. ``True`` marks a masked patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def random_block_mask(
    batch_size: int,
    grid: Sequence[int],
    ratio: float,
    block: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A ``(batch_size, *grid)`` boolean mask, masked in ``block``-cubed cells covering ``ratio`` of them."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    grid = tuple(int(g) for g in grid)
    if any(g % block for g in grid):
        raise ValueError(f"patch grid {grid} is not divisible by the mask block {block}")
    coarse = tuple(g // block for g in grid)
    cells = int(torch.tensor(coarse).prod())
    n_masked = math.floor(ratio * cells + 0.5)  # half rounds up (Python's round() would round to even)
    scores = torch.rand(batch_size, cells, generator=generator)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch_size, cells, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_masked], True)
    mask = mask.view(batch_size, *coarse)
    for dim in range(1, len(grid) + 1):
        mask = mask.repeat_interleave(block, dim=dim)
    return mask.to(device) if device is not None else mask


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Expand a ``(B, *grid)`` mask by ``factor`` along every spatial axis (patch grid -> voxels)."""
    for dim in range(1, mask.ndim):
        mask = mask.repeat_interleave(factor, dim=dim)
    return mask
