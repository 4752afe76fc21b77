"""Assembly of segmentation networks from a (pre-trained) encoder or a pre-trained network.

The SSL benchmark (papers/002, Sec. 3) pre-trains the Swin Transformer encoder of SwinUNETR
(Hatamizadeh et al. 2022) and fine-tunes it inside a SwinUNETR-style network: Swin encoder, 3D CNN decoder,
skip connections. :func:`build_segmenter` builds that network (or a residual U-Net or a SegResNet as CNN
baselines) and loads an encoder file into the Swin encoder when one is given. With ``pretrained_network``
it instead loads a whole supervised pre-trained segmenter except its output layer, the transfer of SuPreM
(Li et al., ICLR 2024; see ``common.networks.transfer``). The ``frozen_swin_*`` architectures keep the Swin
encoder frozen under a linear or U-Net decoder: the frozen-encoder protocol of DINOv2-radiology in 3D.
"""

from __future__ import annotations

import os

from monai.networks.nets import SegResNet, SwinUNETR, UNet
from torch import nn

from .encoder_decoder import build_encoder_segmenter
from .options import network_options
from .pretrained import load_encoder
from .swin import TOTAL_STRIDE
from .transfer import load_network_except_output

# Frozen-encoder segmentation (DINOv2-radiology protocol, papers/004): SwinUNETR's Swin encoder, frozen, with
# a linear or a U-Net decoder on its last four feature maps (``common.networks.encoder_decoder``).
FROZEN_SWIN_DECODERS = {"frozen_swin_linear": "linear", "frozen_swin_unet": "unet"}
ARCHITECTURES = ("swinunetr", "unet", "segresnet", *FROZEN_SWIN_DECODERS)


def build_segmenter(
    arch: str = "swinunetr",
    in_channels: int = 1,
    out_channels: int = 2,
    feature_size: int = 48,
    spatial_dims: int = 3,
    pretrained_encoder: str | os.PathLike | None = None,
    use_checkpoint: bool = False,
    dropout_path_rate: float = 0.0,
    pretrained_network: str | os.PathLike | None = None,
    fused_attention: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Build a segmenter; with ``pretrained_encoder``, its Swin encoder starts from that file.

    Args:
        arch: ``"swinunetr"`` (MONAI SwinUNETR), ``"unet"`` (MONAI residual U-Net, channels
            ``feature_size * (1, 2, 4, 8, 16)``) or ``"segresnet"`` (MONAI SegResNet with SuPreM's
            configuration: blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), no dropout; SuPreM uses
            feature_size 16), or ``"frozen_swin_linear"`` / ``"frozen_swin_unet"`` (the Swin encoder
            frozen, a linear or U-Net decoder trained on its features).
        feature_size: Swin embedding dimension (a multiple of 12), the U-Net's first-level channels or the
            SegResNet's ``init_filters``.
        pretrained_encoder: encoder file of a pre-training bundle (see ``common.networks.pretrained``);
            the Swin architectures only.
        use_checkpoint: gradient checkpointing in the Swin blocks (saves GPU memory; keep it off to export).
        pretrained_network: checkpoint of a whole network of the same arch and size (any class count):
            every layer but the output layer is loaded from it, the output layer keeps its fresh
            initialisation (``common.networks.transfer.load_network_except_output``).
        fused_attention, channels_last: performance switches, same weights and outputs
            (``common.networks.options.network_options``); off by default.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown segmenter arch {arch!r}; choose one of {ARCHITECTURES}")
    if pretrained_encoder and pretrained_network:
        raise ValueError(
            "give pretrained_encoder (a Swin encoder) or pretrained_network (a whole network), not both"
        )
    if pretrained_encoder and arch in ("unet", "segresnet"):
        raise ValueError(
            "pretrained_encoder loads a Swin encoder: use arch='swinunetr' (or a frozen_swin_* arch) with it"
        )
    if arch in FROZEN_SWIN_DECODERS:
        config = {"in_channels": in_channels, "feature_size": feature_size, "spatial_dims": spatial_dims}
        # the Swin encoder declares its feature channels: the size is only checked against spatial_dims
        net = build_encoder_segmenter(
            "swin",
            config,
            out_channels,
            (TOTAL_STRIDE,) * spatial_dims,
            pretrained_encoder,
            decoder=FROZEN_SWIN_DECODERS[arch],
            freeze_encoder=True,
        )
    elif arch == "unet":
        net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(feature_size * m for m in (1, 2, 4, 8, 16)),
            strides=(2, 2, 2, 2),
            num_res_units=2,
            norm="instance",
        )
    elif arch == "segresnet":
        net = SegResNet(
            spatial_dims=spatial_dims,
            init_filters=feature_size,
            in_channels=in_channels,
            out_channels=out_channels,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
            dropout_prob=0.0,
        )
    else:
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
    if pretrained_network:
        load_network_except_output(net, pretrained_network)
    return network_options(net, fused_attention, channels_last, spatial_dims)


def swin_encoder(net: nn.Module) -> nn.Module:
    """Return the Swin encoder of a SwinUNETR (the module encoder files are written from and into)."""
    if not hasattr(net, "swinViT"):
        raise TypeError(f"{type(net).__name__} has no Swin encoder (expected a SwinUNETR)")
    return net.swinViT
