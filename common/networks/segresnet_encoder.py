"""The encoder half of MONAI's SegResNet (Myronenko 2018; one of SuPreM's three backbones) as an encoder of
the collection: the initial convolution and the down-sampling levels of ``SegResNet`` with their parameter
names unchanged (``convInit.*``, ``down_layers.*``): the ``convInit`` and ``down_layers`` entries of a
SegResNet state dict (SuPreM's, for instance) are its weights (tested against ``SegResNet.encode``).

``features`` are the outputs of the four levels (strides 1, 2, 4, 8, widths ``init_filters * 2**i``);
``forward`` is the last one averaged over space; there is no [CLS] token.
"""

from __future__ import annotations

import torch
from monai.networks.nets import SegResNet

from .features import PooledFeatureMaps

BLOCKS_DOWN = (1, 2, 2, 4)


class SegResNetEncoder(PooledFeatureMaps, SegResNet):
    """SegResNet without its up-sampling path (``spatial_dims`` 2 or 3)."""

    def __init__(self, in_channels: int = 1, spatial_dims: int = 3, init_filters: int = 16) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            blocks_down=BLOCKS_DOWN,
        )
        del self.up_layers, self.up_samples, self.conv_final
        self.spatial_dims, self.out_dim = spatial_dims, init_filters * 2 ** (len(BLOCKS_DOWN) - 1)
        self.feature_channels = tuple(init_filters * 2**i for i in range(len(BLOCKS_DOWN)))
        self.feature_strides = tuple(2**i for i in range(len(BLOCKS_DOWN)))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encode(x)[1]
