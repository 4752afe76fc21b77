"""The Swin Transformer encoder of MONAI's SwinUNETR, as a stand-alone network.

Every method of the 3D SSL benchmark (papers/002, Sec. 3) pre-trains this encoder; its state-dict keys are
those of ``SwinUNETR.swinViT``, so an encoder file written from it loads into a SwinUNETR unchanged
(tested). ``forward`` returns a pooled embedding (what inference and export use); ``features`` returns the
five normalised feature maps of MONAI's ``SwinTransformer.forward`` (patch embedding, then stages 1-4).
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import MERGING_MODE, SwinTransformer
from monai.utils import look_up_option
from torch import nn

# SwinUNETR's fixed encoder hyper-parameters (MONAI 1.6 defaults), kept identical so weights transfer.
PATCH_SIZE = 2
WINDOW_SIZE = 7
DEPTHS = (2, 2, 2, 2)
NUM_HEADS = (3, 6, 12, 24)
# The encoder down-samples by 2 (patch embedding) and 2 per stage: inputs must be multiples of this.
TOTAL_STRIDE = 32


class SwinEncoder(SwinTransformer):
    """SwinUNETR's encoder (``spatial_dims`` 2 or 3); ``forward`` gives a ``(B, 16 * feature_size)``
    embedding: the average over space of the last stage's normalised feature map. ``use_v2`` adds the
    residual convolution blocks of SwinUNETR-v2 (``layers{i}c``, MONAI's ``use_v2=True``)."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
        dropout_path_rate: float = 0.0,
        use_v2: bool = False,
    ) -> None:
        super().__init__(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(WINDOW_SIZE,) * spatial_dims,
            patch_size=(PATCH_SIZE,) * spatial_dims,
            depths=DEPTHS,
            num_heads=NUM_HEADS,
            drop_path_rate=dropout_path_rate,
            norm_layer=nn.LayerNorm,
            use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
            downsample=look_up_option("merging", MERGING_MODE),
            use_v2=use_v2,
        )
        self.spatial_dims = spatial_dims
        self.out_dim = 16 * feature_size
        self.feature_channels = tuple(feature_size * 2**i for i in range(5))
        self.feature_strides = tuple(2 ** (i + 1) for i in range(5))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps ``(B, C_i, *grid_i)``, strides 2, 4, 8, 16, 32."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].flatten(2).mean(-1)

    def tokens(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """``(None, patch tokens (B, N, 16 * feature_size))``: Swin has no [CLS] token; its patch tokens are
        the last stage's feature map."""
        return None, tokens(self.features(x)[-1])


def tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, *grid)`` -> ``(B, N, C)``, the grid flattened in C order."""
    return feature_map.flatten(2).transpose(1, 2)
