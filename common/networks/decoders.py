"""Segmentation decoders on a frozen encoder: the DINOv2-radiology protocol (papers/004, Sec. 3.3.2).

The paper segments organs with the encoder frozen and one of two decoders on its features:

- a *linear* decoder, "a lightweight single linear layer" that isolates the quality of the features (the
  analogue of kNN for classification): :class:`LinearDecoder`, the linear segmentation head of DINOv2
  (Oquab et al. 2023, Sec. 7.4): batch norm and a 1x1 convolution (a linear layer applied at every
  patch) on the last feature map, or on the last four maps resized to a common grid and concatenated
  (DINOv2's "+ms" variant), logits upsampled to the input size;
- a *U-Net* decoder "of four blocks, where each block consists of one convolutional layer along with ReLU
  activation function and batch normalization", fed by skip connections "from the previous four blocks of
  the transformer model", concatenated "as is done in the classical U-Net" (Ronneberger et al. 2015):
  :class:`UNetDecoder`.

Both take the encoder's list of feature maps ``(B, C_i, *grid_i)`` (``encoder.features(x)``, see
``common.networks.encoders``) and the input's spatial size, use the last four maps and work in 2D and 3D.
For a ViT the maps are block outputs, chosen by :func:`set_decoder_blocks`: the last four blocks by
default, as DINOv2 does (Oquab et al. 2023, semantic segmentation: "the patch tokens of the 4 last layers";
the U-Net's skips "from the previous four blocks"), or a spread over the depth (the last block of each
quarter).
The four maps may share one grid (a ViT: stride 14 or 16 for every block) or form a pyramid (Swin,
ConvNeXt: strides 4, 8, 16, 32). Their ``forward`` (and the functions it calls) is TorchScript code:
``torch.jit.script`` compiles it, as ``monai.bundle ckpt_export`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from .vit import default_feature_blocks

# The decoders read the last four feature maps (the paper's "previous four blocks").
NUM_SCALES = 4
INTERPOLATION = {2: "bilinear", 3: "trilinear"}
# Which transformer blocks a ViT's feature maps come from (:func:`decoder_blocks`; "encoder": as built).
DECODER_BLOCKS = ("last", "spread", "encoder")


def _check_choice(choice: str) -> None:
    if choice not in DECODER_BLOCKS:
        raise ValueError(f"decoder_blocks must be one of {DECODER_BLOCKS}, got {choice!r}")


def decoder_blocks(depth: int, choice: str = "last") -> tuple[int, ...]:
    """The four block indices (of ``depth``) whose outputs feed a decoder: ``"last"``, the last four
    (DINOv2's choice); ``"spread"``, the last block of each quarter of the depth
    (:func:`~common.networks.vit.default_feature_blocks`, e.g. 2, 5, 8, 11 of 12)."""
    if choice not in ("last", "spread"):
        raise ValueError(f"decoder_blocks: choose 'last' or 'spread' for a list of blocks, got {choice!r}")
    if depth < NUM_SCALES:
        raise ValueError(f"decoder_blocks: a depth of {depth} blocks has fewer than {NUM_SCALES}")
    if choice == "spread":
        return default_feature_blocks(depth)
    return tuple(range(depth - NUM_SCALES, depth))


def set_decoder_blocks(encoder: nn.Module, choice: str = "last") -> nn.Module:
    """``encoder`` with its ``feature_blocks`` set to :func:`decoder_blocks` of its depth, for an encoder
    whose feature maps are the outputs of transformer blocks (a ViT: attributes ``blocks`` and
    ``feature_blocks``): ``"last"`` and ``"spread"`` replace the blocks the encoder was built with,
    ``"encoder"`` keeps them (a ViT built with its own ``feature_blocks``). A pyramid encoder (Swin,
    ConvNeXt, ...: one map per stage) is returned unchanged (the choice is still checked)."""
    _check_choice(choice)
    if choice != "encoder" and hasattr(encoder, "feature_blocks") and hasattr(encoder, "blocks"):
        encoder.feature_blocks = decoder_blocks(len(encoder.blocks), choice)
    return encoder


def resize(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``x (B, C, *grid)`` resampled (bilinear in 2D, trilinear in 3D) to the spatial ``size``; unchanged
    when it already has that size."""
    size = list(size)
    if list(x.shape[2:]) == size:
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"  # INTERPOLATION, spelled out for TorchScript
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in INTERPOLATION:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _last_four(feature_channels: Sequence[int]) -> tuple[int, ...]:
    if len(feature_channels) < NUM_SCALES:
        raise ValueError(
            f"the decoders read the last {NUM_SCALES} feature maps; the encoder gives only "
            f"{len(feature_channels)} (feature_channels={tuple(feature_channels)})"
        )
    return tuple(int(c) for c in feature_channels[-NUM_SCALES:])


def _check_features(features: list[torch.Tensor], channels: list[int], spatial_dims: int) -> None:
    """The maps a decoder receives must match the channels and dimensionality it was built for."""
    got = [f.shape[1] for f in features]
    if len(features) < len(channels) or got[-len(channels) :] != channels:
        raise ValueError(
            f"decoder built for feature maps with channels {channels} (last {len(channels)}) got "
            f"{len(features)} maps with channels {got}"
        )
    for f in features[-len(channels) :]:
        if f.ndim != spatial_dims + 2:
            raise ValueError(
                f"decoder built for spatial_dims={spatial_dims} got maps of shapes "
                f"{[f.shape for f in features]}"
            )


class LinearDecoder(nn.Module):
    """DINOv2's linear segmentation head: ``conv1x1(BN(z))`` with ``z`` the last feature map, or with
    ``use_all_scales`` the last four maps resized to the finest of their grids and concatenated; the
    logits are resized to the input size (bilinear/trilinear).

    Args:
        feature_channels: channels of every feature map of the encoder (``encoder.feature_channels``).
        num_classes: output channels (background included).
        spatial_dims: 2 or 3.
        use_all_scales: read the last four maps instead of the last one.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        num_classes: int,
        spatial_dims: int = 2,
        use_all_scales: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        last_four = _last_four(feature_channels)
        self.spatial_dims = spatial_dims
        self.in_channels = list(last_four if use_all_scales else last_four[-1:])
        width = sum(self.in_channels)
        self.norm = Norm[Norm.BATCH, spatial_dims](width)
        self.classifier = Conv[Conv.CONV, spatial_dims](width, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], output_size: list[int]) -> torch.Tensor:
        _check_features(features, self.in_channels, self.spatial_dims)
        maps = features[-len(self.in_channels) :]
        finest = maps[0]  # the first of the maps with the most grid points
        for m in maps[1:]:
            if m[0, 0].numel() > finest[0, 0].numel():
                finest = m
        z = torch.cat([resize(m, finest.shape[2:]) for m in maps], dim=1)
        return resize(self.classifier(self.norm(z)), output_size)


def conv_relu_norm(in_channels: int, out_channels: int, spatial_dims: int) -> nn.Sequential:
    """One block of the paper's U-Net decoder, in its order: 3x3(x3) convolution, ReLU, batch norm."""
    return nn.Sequential(
        Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        Norm[Norm.BATCH, spatial_dims](out_channels),
    )


class UNetDecoder(nn.Module):
    """The paper's U-Net decoder: four :func:`conv_relu_norm` blocks from the deepest of the last four
    feature maps up. Block 1 reads the deepest map; block ``i`` (2..4) reads the previous block's output
    resized to the grid of the ``i``-th deepest map (the skip) and concatenated with it. A 1x1 convolution
    maps the last block to class logits, resized to the input size.

    Maps on one grid (a ViT's blocks) make every resize the identity; a pyramid (Swin, ConvNeXt) is
    climbed scale by scale as in the classical U-Net.

    Args:
        feature_channels: channels of every feature map of the encoder (``encoder.feature_channels``).
        num_classes: output channels (background included).
        spatial_dims: 2 or 3.
        channels: output channels of the four blocks, deepest first.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        num_classes: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if len(channels) != NUM_SCALES:
            raise ValueError(f"channels must give {NUM_SCALES} block widths, got {tuple(channels)}")
        self.spatial_dims = spatial_dims
        self.in_channels = list(_last_four(feature_channels))
        skips = self.in_channels[::-1]  # deepest first
        block_inputs = [skips[0]] + [c + s for c, s in zip(channels[:-1], skips[1:], strict=True)]
        self.blocks = nn.ModuleList(
            conv_relu_norm(i, o, spatial_dims) for i, o in zip(block_inputs, channels, strict=True)
        )
        self.classifier = Conv[Conv.CONV, spatial_dims](channels[-1], num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], output_size: list[int]) -> torch.Tensor:
        _check_features(features, self.in_channels, self.spatial_dims)
        skips = features[-len(self.in_channels) :][::-1]  # deepest first; block i > 0 reads skips[i]
        x = features[-1]
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else torch.cat([resize(x, skips[i].shape[2:]), skips[i]], dim=1))
        return resize(self.classifier(x), output_size)


DECODERS: dict[str, type[nn.Module]] = {"linear": LinearDecoder, "unet": UNetDecoder}
