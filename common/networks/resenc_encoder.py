"""The residual encoder of nnU-Net's ``ResidualEncoderUNet`` as an encoder of the collection: the network
nnssl / OpenMind (Wald et al., 2025, https://github.com/MIC-DKFZ/nnssl) pre-trains as "ResEnc-L", built from
the ``dynamic-network-architectures`` package's own ``ResidualEncoder`` class.

The class is kept as the attribute ``encoder``, so the parameter names are those of a whole
``ResidualEncoderUNet`` (``encoder.stem.*``, ``encoder.stages.{i}.*``, the layout of nnssl's checkpoints).
``features`` are the outputs of the stages (strides the running product of ``strides``, widths
``features_per_stage``); ``forward`` is the last one averaged over space; there is no [CLS] token.

``dynamic-network-architectures`` requires ``timm``, which would replace the project's torch, so
``make setup`` installs it with ``--no-deps`` (its residual encoder imports no ``timm``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .features import PooledFeatureMaps

# nnssl's ResEnc-L (nnssl.architectures.architecture_registry.get_res_enc_l)
RESENC_L = {
    "features_per_stage": (32, 64, 128, 256, 320, 320),
    "n_blocks_per_stage": (1, 3, 4, 6, 6, 6),
    "strides": (1, 2, 2, 2, 2, 2),
}
INSTALL = "pip install --no-deps dynamic-network-architectures==0.4.4 (done by make setup)"


def residual_encoder_class() -> type[nn.Module]:
    """``dynamic_network_architectures``' ``ResidualEncoder``; ``ImportError`` naming the install command."""
    try:
        from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
    except ImportError as err:
        raise ImportError(f"the 'resenc' encoder needs dynamic-network-architectures: {INSTALL}") from err
    return ResidualEncoder


class ResEncEncoder(PooledFeatureMaps, nn.Module):
    """``ResidualEncoder`` (``spatial_dims`` 2 or 3) configured as in nnssl's ``ResidualEncoderUNet`` (kernel
    3, conv bias, affine instance norm with eps 1e-5, in-place LeakyReLU), with the encoder interface."""

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 3,
        features_per_stage: tuple[int, ...] = RESENC_L["features_per_stage"],
        n_blocks_per_stage: tuple[int, ...] = RESENC_L["n_blocks_per_stage"],
        strides: tuple[int, ...] = RESENC_L["strides"],
    ) -> None:
        super().__init__()
        if not len(features_per_stage) == len(n_blocks_per_stage) == len(strides) >= 4:
            raise ValueError(
                "ResEncEncoder: features_per_stage, n_blocks_per_stage and strides need one entry per stage "
                f"(at least 4), got {features_per_stage}, {n_blocks_per_stage}, {strides}"
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"ResEncEncoder: spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.encoder = residual_encoder_class()(
            input_channels=in_channels,
            n_stages=len(features_per_stage),
            features_per_stage=list(features_per_stage),
            conv_op=conv,
            kernel_sizes=[[3] * spatial_dims for _ in features_per_stage],
            strides=[[s] * spatial_dims for s in strides],
            n_blocks_per_stage=list(n_blocks_per_stage),
            conv_bias=True,
            norm_op=norm,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            return_skips=True,
        )
        self.spatial_dims = spatial_dims
        self.feature_channels = tuple(features_per_stage)
        self.feature_strides = tuple(math.prod(strides[: i + 1]) for i in range(len(strides)))
        self.out_dim = self.feature_channels[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the stages (``ResidualEncoder`` with ``return_skips``)."""
        return self.encoder(x)
