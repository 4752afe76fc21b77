"""MAE (He et al. 2022) for SwinUNETR's hierarchical Swin encoder, in its masked-token form.

MAE's encoder sees only the visible patches; a hierarchical Swin encoder (windows, patch merging) cannot
drop tokens, so masked cells are replaced by a learnable mask token after the patch embedding and the
encoder sees every position (:func:`~common.ssl.masking.masked_patches`), as SimMIM (Xie et al. 2022) and
the 3D study of Wald et al. (CVPR 2025, "Revisiting MAE pre-training for 3D medical image segmentation") do.
MAE's other parts are kept (Sec. 3):

- random masking of a high ratio (0.75, Fig. 5) of the stride-16 tokens
  (:data:`~common.ssl.masking.TOKEN_STRIDE`; ``mask_patch_size`` 16 voxels, the patch size of MAE's
  ViT-L/16, Sec. 4): a 96³ view has 216 tokens, 162 of them masked;
- an asymmetric lightweight transformer decoder (8 blocks of width 512, Table 1a-b) on the stride-16
  token grid: the encoder's last, stride-32 map is brought to that grid by a transposed convolution of
  kernel and stride 2 (each token's embedding split into its 2**D sub-cells), then a learned position
  embedding is added; the encoder's output already stands at the masked positions, so MAE's decoder mask
  token has nothing left to fill;
- a linear layer predicting each stride-16 token's ``16**D * C`` voxels, and the mean squared error on
  masked tokens against per-patch normalised voxels (:func:`~common.losses.mae.mae_loss`).

The position embedding is learned on the token grid of ``img_size`` (the training view size) and resized
by linear interpolation when a view of another size comes in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.mae import mae_loss, patchify
from ..networks.swin import TOTAL_STRIDE, SwinEncoder, tokens
from .base import SSLMethod, views
from .masking import TOKEN_STRIDE, check_mask_patch_size, masked_patches, patch_mask_for, token_mask


class MAEDecoder(nn.Module):
    """MAE's decoder (He et al. 2022, Sec. 3 "MAE decoder"): an embedding of the stride-32 map to ``dim``
    channels on the ``upsample``-times finer grid (a transposed convolution), a learned position embedding,
    ``depth`` pre-norm transformer blocks (MLP ratio 4, GELU), a LayerNorm and a linear prediction of
    ``out_dim`` values per token."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        grid: Sequence[int],
        upsample: int = TOTAL_STRIDE // TOKEN_STRIDE,
    ) -> None:
        super().__init__()
        conv = nn.ConvTranspose3d if len(grid) == 3 else nn.ConvTranspose2d
        self.embed = conv(in_dim, dim, kernel_size=upsample, stride=upsample)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        block = dict(
            dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(dim, num_heads, **block) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim)

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """``(1, N, dim)`` for a token grid, interpolated from the learned grid where the sizes differ."""
        pos = self.pos_embed
        if tuple(pos.shape[2:]) != tuple(grid):
            mode = "trilinear" if len(grid) == 3 else "bilinear"
            pos = F.interpolate(pos, size=tuple(grid), mode=mode, align_corners=False)
        return tokens(pos)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, *grid)`` -> ``(B, N, out_dim)``, the tokens of the ``upsample``-times finer grid in
        C order."""
        embedded = self.embed(feature_map)
        x = tokens(embedded) + self.position_embedding(embedded.shape[2:])
        return self.pred(self.norm(self.blocks(x)))


class MAE(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        mask_ratio: float = 0.75,
        mask_patch_size: int = TOKEN_STRIDE,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        img_size: int = 96,
        norm_pix_loss: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_mask_patch_size(mask_patch_size)
        if img_size % TOTAL_STRIDE:
            raise ValueError(f"img_size {img_size} must be a multiple of the encoder's stride {TOTAL_STRIDE}")
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.mask_token = nn.Parameter(torch.zeros(feature_size))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        grid = (img_size // TOKEN_STRIDE,) * spatial_dims
        out_dim = TOKEN_STRIDE**spatial_dims * in_channels
        self.decoder = MAEDecoder(
            self.encoder.out_dim, out_dim, decoder_dim, decoder_depth, decoder_num_heads, grid
        )
        self.mask_ratio, self.mask_patch_size, self.norm_pix_loss = mask_ratio, mask_patch_size, norm_pix_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = views(batch, "global")[0]
        mask = patch_mask_for(x, self.mask_ratio, self.mask_patch_size)
        with masked_patches(self.encoder, mask, self.mask_token):
            prediction = self.decoder(self.encoder.features(x)[-1])
        loss = mae_loss(prediction, patchify(x, TOKEN_STRIDE), token_mask(mask), self.norm_pix_loss)
        return {"loss": loss, "reconstruction": loss.detach()}
