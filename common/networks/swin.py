"""The Swin Transformer encoder of MONAI's SwinUNETR, as a stand-alone network.

Every method of the 3D SSL benchmark (papers/002, Sec. 3) pre-trains this encoder; its state-dict keys are
those of ``SwinUNETR.swinViT``, so an encoder file written from it loads into a SwinUNETR unchanged
(tested). ``forward`` returns a pooled embedding (what inference and export use); ``features`` returns the
five normalised feature maps of MONAI's ``SwinTransformer.forward`` (patch embedding, then stages 1-4).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    residual convolution blocks of SwinUNETR-v2 (``layers{i}c``, MONAI's ``use_v2=True``).

    ``depths`` / ``num_heads``: blocks and attention heads of the four stages (default SwinUNETR's). Swin-B
    (Liu et al. 2021, Table 1; LeADER's student, papers/001 Sec. 4) is ``feature_size=128,
    depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)``; MONAI's Swin adds a patch merging after the fourth
    stage (``out_dim = 16 * feature_size``), which the original Swin-B does not have."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
        dropout_path_rate: float = 0.0,
        use_v2: bool = False,
        depths: Sequence[int] = DEPTHS,
        num_heads: Sequence[int] = NUM_HEADS,
    ) -> None:
        if len(depths) != len(DEPTHS) or len(num_heads) != len(NUM_HEADS):
            raise ValueError(
                f"SwinEncoder has {len(DEPTHS)} stages: depths and num_heads need {len(DEPTHS)} entries, "
                f"got depths={tuple(depths)}, num_heads={tuple(num_heads)}"
            )
        super().__init__(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(WINDOW_SIZE,) * spatial_dims,
            patch_size=(PATCH_SIZE,) * spatial_dims,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
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

    def feature_index(self, stride: int) -> int:
        """The position in :meth:`features` (and ``feature_channels``) of the map at ``stride``."""
        if stride not in self.feature_strides:
            raise ValueError(
                f"the Swin encoder has feature maps at strides {self.feature_strides}, not {stride}"
            )
        return self.feature_strides.index(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].flatten(2).mean(-1)

    def tokens(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """``(None, patch tokens (B, N, 16 * feature_size))``: Swin has no [CLS] token; its patch tokens are
        the last stage's feature map."""
        return None, tokens(self.features(x)[-1])


def tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, *grid)`` -> ``(B, N, C)``, the grid flattened in C order."""
    return feature_map.flatten(2).transpose(1, 2)
