"""SimMIM (Xie et al. 2022): masked image modelling with a one-layer prediction head.

Random blocks of ``mask_patch_size`` voxels (ratio ``mask_ratio``; the paper's best for Swin: 32 px blocks
at ratio 0.6, Table 1) are replaced by a learnable mask token after the patch embedding; the encoder's last
feature map (stride 32) is mapped by a 1x1 convolution to ``32**D * C`` values per token and rearranged to
voxels (pixel shuffle), and the l1 loss is taken over masked voxels only (Eq. 1).
"""

from __future__ import annotations

import torch
from monai.networks.utils import pixelshuffle
from torch import nn

from ..losses.simmim import masked_l1_loss
from ..networks.swin import PATCH_SIZE, TOTAL_STRIDE, SwinEncoder
from ..transforms.masking import upsample_mask
from .base import SSLMethod, views
from .masking import masked_patches, patch_mask_for


class ReconstructionHead(nn.Module):
    """SimMIM's prediction head: a 1x1 convolution to ``stride**D * C`` channels, then pixel shuffle."""

    def __init__(self, in_dim: int, out_channels: int, spatial_dims: int, stride: int = TOTAL_STRIDE) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.proj = conv(in_dim, stride**spatial_dims * out_channels, kernel_size=1)
        self.spatial_dims, self.stride = spatial_dims, stride

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return pixelshuffle(self.proj(feature_map), self.spatial_dims, self.stride)


class SimMIM(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 16,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.mask_token = nn.Parameter(torch.zeros(feature_size))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = ReconstructionHead(self.encoder.out_dim, in_channels, spatial_dims)
        self.mask_ratio, self.mask_patch_size = mask_ratio, mask_patch_size

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = views(batch, "global")[0]
        mask = patch_mask_for(x, self.mask_ratio, self.mask_patch_size)
        with masked_patches(self.encoder, mask, self.mask_token):
            prediction = self.head(self.encoder.features(x)[-1])
        loss = masked_l1_loss(prediction, x, upsample_mask(mask, PATCH_SIZE))
        return {"loss": loss, "reconstruction": loss.detach()}
