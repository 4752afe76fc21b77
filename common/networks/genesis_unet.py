"""Models Genesis' 3D U-Net (Zhou et al., "Models Genesis", MedIA 2021), the U-Net of SuPreM (Li et al.,
ICLR 2024), with the parameter names of its published code (``MrGiovanni/ModelsGenesis``,
``pytorch/unet3d.py``), so that its checkpoints load unchanged:

- four down levels ``down_tr64``, ``down_tr128``, ``down_tr256``, ``down_tr512``, each two
  ``conv1`` (3^3 convolution with bias) -> ``bn1`` -> ReLU units in ``ops``, widths ``(32, 64)``,
  ``(64, 128)``, ``(128, 256)``, ``(256, 512)``; 2^3 max pooling after each of the first three;
- three up levels ``up_tr256``, ``up_tr128``, ``up_tr64``: ``up_conv`` (2^3 transposed convolution, stride
  2, keeping the width), concatenation with the skip, two units of widths ``(256, 256)``, ``(128, 128)``,
  ``(64, 64)``;
- ``out_tr.final_conv`` (1^3 convolution to the classes); the published network applies a sigmoid, which
  :class:`GenesisUNet` leaves to the loss or the post-processing (it returns logits).

Its batch normalisation always uses the statistics of the current batch, in evaluation too (the published
``ContBatchNorm3d``; :class:`BatchStatsNorm3d`). :class:`GenesisEncoder` is the down path with the
collection's encoder interface (``common.networks.encoders``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .features import PooledFeatureMaps

BASE_WIDTH = 32
LEVEL_NAMES = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
UP_NAMES = ("up_tr256", "up_tr128", "up_tr64")


class BatchStatsNorm3d(nn.BatchNorm3d):
    """Batch normalisation with the current batch's statistics in training and evaluation alike (running
    statistics are updated but never used), as Models Genesis' ``ContBatchNorm3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
        )


class ConvUnit(nn.Module):
    """``conv1`` (3^3, bias) -> ``bn1`` -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = BatchStatsNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


def two_units(in_channels: int, mid: int, out: int) -> nn.Sequential:
    """``ops``: two :class:`ConvUnit` of widths ``mid`` then ``out``."""
    return nn.Sequential(ConvUnit(in_channels, mid), ConvUnit(mid, out))


class DownLevel(nn.Module):
    """Level ``depth`` of the down path: ``ops`` to ``BASE_WIDTH * 2**(depth + 1)`` channels."""

    def __init__(self, in_channels: int, depth: int) -> None:
        super().__init__()
        width = BASE_WIDTH * 2**depth
        self.ops = two_units(in_channels, width, 2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class UpLevel(nn.Module):
    """``up_conv`` of ``channels``, concatenation with the skip (``channels // 2``), ``ops`` to
    ``channels // 2``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(channels, channels, kernel_size=2, stride=2)
        self.ops = two_units(channels + channels // 2, channels // 2, channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class GenesisEncoder(PooledFeatureMaps, nn.Module):
    """The down path of Models Genesis' U-Net (one input channel in the published weights).

    ``features(x)`` gives the four levels' outputs before pooling (widths 64, 128, 256, 512; strides 1, 2,
    4, 8); ``forward`` the last one averaged over space; ``tokens`` the last one as tokens.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        widths = [in_channels] + [2 * BASE_WIDTH * 2**depth for depth in range(len(LEVEL_NAMES))]
        for depth, name in enumerate(LEVEL_NAMES):
            self.add_module(name, DownLevel(widths[depth], depth))
        self.spatial_dims = 3
        self.feature_channels = tuple(widths[1:])
        self.feature_strides = tuple(2**depth for depth in range(len(LEVEL_NAMES)))
        self.out_dim = self.feature_channels[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four levels' outputs before pooling (the published ``out_before_pool``)."""
        level64 = self.down_tr64(x)
        level128 = self.down_tr128(F.max_pool3d(level64, 2))
        level256 = self.down_tr256(F.max_pool3d(level128, 2))
        return [level64, level128, level256, self.down_tr512(F.max_pool3d(level256, 2))]


class GenesisUNet(GenesisEncoder):
    """Models Genesis' whole 3D U-Net: the down path, three up levels and ``out_tr.final_conv`` to
    ``out_channels`` logits. Inputs need sides divisible by 8."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__(in_channels)
        for name, channels in zip(UP_NAMES, (512, 256, 128), strict=True):
            self.add_module(name, UpLevel(channels))
        self.out_tr = nn.Module()
        self.out_tr.final_conv = nn.Conv3d(2 * BASE_WIDTH, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level64, level128, level256, x = self.features(x)
        x = self.up_tr64(self.up_tr128(self.up_tr256(x, level256), level128), level64)
        return self.out_tr.final_conv(x)
