"""Assembly of segmentation networks from a (pre-trained) encoder.

The SSL benchmark (papers/002, Sec. 3) pre-trains the Swin Transformer encoder of SwinUNETR
(Hatamizadeh et al. 2022) and fine-tunes it inside a SwinUNETR-style network: Swin encoder, 3D CNN decoder,
skip connections. :func:`build_segmenter` builds that network (or a residual U-Net as a CNN baseline) and
loads an encoder file into the Swin encoder when one is given.
"""

from __future__ import annotations

import os

from monai.networks.nets import SwinUNETR, UNet
from torch import nn

from .pretrained import load_encoder

ARCHITECTURES = ("swinunetr", "unet")


def build_segmenter(
    arch: str = "swinunetr",
    in_channels: int = 1,
    out_channels: int = 2,
    feature_size: int = 48,
    spatial_dims: int = 3,
    pretrained_encoder: str | os.PathLike | None = None,
    use_checkpoint: bool = False,
    dropout_path_rate: float = 0.0,
) -> nn.Module:
    """Build a segmenter; with ``pretrained_encoder``, its Swin encoder starts from that file.

    Args:
        arch: ``"swinunetr"`` (MONAI SwinUNETR) or ``"unet"`` (MONAI residual U-Net, channels
            ``feature_size * (1, 2, 4, 8, 16)``).
        feature_size: Swin embedding dimension (a multiple of 12) or the U-Net's first-level channels.
        pretrained_encoder: encoder file of a pre-training bundle (see ``common.networks.pretrained``).
        use_checkpoint: gradient checkpointing in the Swin blocks (saves GPU memory; keep it off to export).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown segmenter arch {arch!r}; choose one of {ARCHITECTURES}")
    if arch == "unet":
        if pretrained_encoder:
            raise ValueError("pretrained_encoder loads a Swin encoder: use arch='swinunetr' with it")
        return UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(feature_size * m for m in (1, 2, 4, 8, 16)),
            strides=(2, 2, 2, 2),
            num_res_units=2,
            norm="instance",
        )
    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        spatial_dims=spatial_dims,
        use_checkpoint=use_checkpoint,
        dropout_path_rate=dropout_path_rate,
    )
    if pretrained_encoder:
        load_encoder(net.swinViT, pretrained_encoder)
    return net


def swin_encoder(net: nn.Module) -> nn.Module:
    """Return the Swin encoder of a SwinUNETR (the module encoder files are written from and into)."""
    if not hasattr(net, "swinViT"):
        raise TypeError(f"{type(net).__name__} has no Swin encoder (expected a SwinUNETR)")
    return net.swinViT
