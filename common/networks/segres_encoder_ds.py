"""MONAI's ``SegResEncoder`` (``monai.networks.nets.segresnet_ds``, the encoder of SegResNetDS) as an encoder
of the collection: the network CT-FM (Pai et al., 2025; ``project-lighter/ct_fm_feature_extractor``, loaded
by ``lighter_zoo.SegResEncoder``) publishes, with MONAI's parameter names (``conv_init.*``,
``layers.{i}.*``).

``features`` are the outputs of its levels (strides 1, 2, 4, ..., widths ``init_filters * 2**i``);
``forward`` is the last one averaged over space (CT-FM's embedding); there is no [CLS] token.
"""

from __future__ import annotations

import torch
from monai.networks.nets.segresnet_ds import SegResEncoder

from .features import PooledFeatureMaps

CT_FM_BLOCKS_DOWN = (1, 2, 2, 4, 4)


class SegResDSEncoder(PooledFeatureMaps, SegResEncoder):
    """MONAI ``SegResEncoder`` (``spatial_dims`` 2 or 3) with the collection's encoder interface."""

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 3,
        init_filters: int = 32,
        blocks_down: tuple[int, ...] = CT_FM_BLOCKS_DOWN,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            blocks_down=tuple(blocks_down),
        )
        self.spatial_dims = spatial_dims
        self.feature_channels = tuple(init_filters * 2**i for i in range(len(blocks_down)))
        self.feature_strides = tuple(2**i for i in range(len(blocks_down)))
        self.out_dim = self.feature_channels[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the levels (``SegResEncoder._forward`` without a head)."""
        return self._forward(x)
