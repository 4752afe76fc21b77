"""Random box cut-outs for masked volume inpainting (Tang et al. 2022, Sec. 3.2, "masked volume inpainting":
random regions of the sub-volume are masked out, up to a volume ratio of 30 %).

Per sample a target ratio is drawn from ``U(0, max_ratio)``; boxes are added at random until the union of
the boxes covers at least that fraction of the voxels (the last box may overshoot it). Each box side lies
between ``min_block`` and ``max_block`` of the axis (the official code's ``tolr`` 0.05 and
``max_block_sz`` 0.25), its start anywhere that leaves ``min_block`` of the axis, clipped at the border.
Masked voxels are then replaced by noise or zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FILLS = ("noise", "zero")


def random_cutout_mask(
    batch_size: int,
    spatial_shape: Sequence[int],
    max_ratio: float = 0.3,
    min_block: float = 0.05,
    max_block: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A ``(batch_size, *spatial_shape)`` boolean mask of random boxes, true where cut out."""
    if not 0.0 <= max_ratio < 1.0 or not 0.0 < min_block <= max_block <= 1.0:
        raise ValueError(
            f"need 0 <= max_ratio < 1, 0 < min_block <= max_block <= 1: {max_ratio}, {min_block}, {max_block}"
        )
    shape = tuple(int(s) for s in spatial_shape)
    low = torch.tensor([max(1, int(min_block * s)) for s in shape])
    high = torch.maximum(torch.tensor([int(max_block * s) for s in shape]), low)
    size = torch.tensor(shape)
    mask = torch.zeros(batch_size, *shape, dtype=torch.bool)
    for sample in mask:
        target, covered = float(torch.rand((), generator=generator)) * max_ratio * sample.numel(), 0
        while covered < target:
            u = torch.rand(2, len(shape), generator=generator)
            start = (u[0] * (size - low + 1)).long()
            stop = torch.minimum(start + low + (u[1] * (high - low + 1)).long(), size)
            box = sample[tuple(slice(a, b) for a, b in zip(start.tolist(), stop.tolist(), strict=True))]
            covered += box.numel() - int(box.sum())
            box.fill_(True)
    return mask.to(device) if device is not None else mask


def cutout(
    x: torch.Tensor, mask: torch.Tensor, fill: str = "noise", generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` ``(B, C, *spatial)`` with the voxels of ``mask`` ``(B, *spatial)`` replaced, in every channel,
    by uniform noise in [0, 1) (``"noise"``, the intensity range of the views) or by zeros."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if mask.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match x {tuple(x.shape)}")
    if fill == "zero":
        values = torch.zeros_like(x)
    else:
        device = x.device if generator is None else generator.device
        values = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    return torch.where(mask.unsqueeze(1), values, x)
