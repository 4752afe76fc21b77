"""Masked input for a Swin encoder: masked patches are replaced by a learnable token after the patch
embedding (SimMIM, Xie et al. 2022, Sec. 3.1), the way masked image modelling fits a hierarchical encoder
that cannot drop tokens.

MAE, iBOT and SMIT mask, predict and distil the tokens of one grid, ``TOKEN_STRIDE`` = 16 voxels: the
output of the Swin's third stage, 8 patch-embedding cells of 2 voxels per axis, the token size of the
papers' ViT-B/16 and ViT-L/16 (MAE Sec. 4, iBOT Sec. 4) and of the 16-voxel mask blocks of SMIT's code
(Jiang et al. 2022). A 96³ view has 6³ = 216 such tokens.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..networks.swin import PATCH_SIZE
from ..transforms.masking import random_block_mask

TOKEN_STRIDE = 16


@contextmanager
def masked_patches(encoder: nn.Module, mask: torch.Tensor, mask_token: torch.Tensor):
    """Within the block, ``encoder.patch_embed``'s output is ``(1 - m) * x + m * mask_token``.

    ``mask``: ``(B, *patch_grid)`` booleans; ``mask_token``: ``(C,)``.
    """

    def replace(module, inputs, output):
        m = mask.unsqueeze(1).to(output.dtype)
        token = mask_token.to(output.dtype).view(1, -1, *([1] * (output.ndim - 2)))
        return output * (1 - m) + token * m

    handle = encoder.patch_embed.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def patch_mask_for(x: torch.Tensor, ratio: float, mask_patch_size: int) -> torch.Tensor:
    """A random block mask on the patch grid of input ``x`` ``(B, C, *spatial)``, in cells of
    ``mask_patch_size`` voxels (a multiple of the patch size dividing the input size)."""
    if mask_patch_size % PATCH_SIZE:
        raise ValueError(f"mask_patch_size {mask_patch_size} must be a multiple of {PATCH_SIZE}")
    grid = [s // PATCH_SIZE for s in x.shape[2:]]
    return random_block_mask(x.shape[0], grid, ratio, mask_patch_size // PATCH_SIZE, device=x.device)


def check_mask_patch_size(mask_patch_size: int) -> None:
    """A mask block must cover whole ``TOKEN_STRIDE`` tokens, so that a token is masked exactly when its
    voxels are."""
    if mask_patch_size <= 0 or mask_patch_size % TOKEN_STRIDE:
        raise ValueError(
            f"mask_patch_size {mask_patch_size} must be a positive multiple of the token stride "
            f"{TOKEN_STRIDE}"
        )


def token_mask(patch_mask: torch.Tensor, stride: int = TOKEN_STRIDE) -> torch.Tensor:
    """``(B, *patch_grid)`` mask of whole ``stride``-voxel blocks -> ``(B, N)`` mask of the stride-``stride``
    tokens, in the order of :func:`~common.networks.swin.tokens`."""
    step = stride // PATCH_SIZE  # patch-grid cells per token along each axis
    return patch_mask[(slice(None),) + (slice(None, None, step),) * (patch_mask.ndim - 1)].flatten(1)
