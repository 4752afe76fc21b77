"""One interface for every encoder of the collection, and one way to build it from a config and a file.

Every encoder (:class:`~common.networks.swin.SwinEncoder` 2D/3D, :class:`~common.networks.convnext.ConvNeXt`
2D/3D, :class:`~common.networks.vit.ViT` 2D with DINOv2 compatibility, the encoder half of SegResNet
:class:`~common.networks.segresnet_encoder.SegResNetEncoder` 2D/3D, MONAI's ``SegResEncoder``
:class:`~common.networks.segres_encoder_ds.SegResDSEncoder` (CT-FM), MONAI's 3D ResNet
:class:`~common.networks.resnet_encoder.ResNetEncoder` (MedicalNet), the down path of Models Genesis' U-Net
:class:`~common.networks.genesis_unet.GenesisEncoder` (SuPreM's U-Net), the residual encoder of nnU-Net's
``ResidualEncoderUNet`` :class:`~common.networks.resenc_encoder.ResEncEncoder` (nnssl / OpenMind ResEnc-L))
has

- ``forward(x) -> (B, out_dim)``: the pooled embedding (ViT: the [CLS] token);
- ``tokens(x) -> (cls | None, patch tokens (B, N, D))``: the token view (``cls`` is ``None`` without one);
- ``features(x) -> [maps (B, C_i, *grid_i)]``: multi-scale features for decoders (the last four are used);
- attributes ``spatial_dims``, ``out_dim``, ``feature_channels``, ``feature_strides``.

Pre-training bundles write encoder files with meta ``encoder`` (a name of :data:`ENCODERS`) and
``encoder_config`` (the constructor arguments), so :func:`encoder_from_file` rebuilds an encoder from the file
alone; files of the 3D SSL bundles, which predate the registry, carry ``in_channels``, ``feature_size`` and
``spatial_dims`` and are Swin encoders.

Published checkpoints (``common.networks.published.PUBLISHED``: MONAI's SwinUNETR self-supervised weights,
SuPreM, CT-FM, MedicalNet, DINOv2, RAD-DINO, nnssl ResEnc-L) are built by their name:
``build_encoder("dinov2_vits14", weights=PATH)``, with the entry's encoder and configuration (``config``
overrides it) and its key mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn

from .convnext import ConvNeXt
from .genesis_unet import GenesisEncoder
from .options import network_options
from .pretrained import EncoderLoadError, load_encoder, read_encoder_file
from .published import PUBLISHED, load_published
from .resenc_encoder import ResEncEncoder
from .resnet_encoder import ResNetEncoder
from .segres_encoder_ds import SegResDSEncoder
from .segresnet_encoder import SegResNetEncoder
from .swin import SwinEncoder
from .vit import ViT

ENCODERS: dict[str, type[nn.Module]] = {
    "swin": SwinEncoder,
    "convnext": ConvNeXt,
    "vit": ViT,
    "segresnet": SegResNetEncoder,
    "segresencoder": SegResDSEncoder,
    "resnet": ResNetEncoder,
    "genesis_unet": GenesisEncoder,
    "resenc": ResEncEncoder,
}
LEGACY_SWIN_META = ("in_channels", "feature_size", "spatial_dims")


def build_encoder(
    name: str = "swin",
    pretrained_encoder: str | os.PathLike | None = None,
    *,
    weights: str | os.PathLike | None = None,
    fused_attention: bool = False,
    channels_last: bool = False,
    **config,
) -> nn.Module:
    """``ENCODERS[name](**config)``, loaded from the encoder file ``pretrained_encoder`` (or ``weights``, the
    same argument by another name) when one is given (strict key and shape check,
    :func:`~common.networks.pretrained.load_encoder`). ``""`` means no file.

    ``name`` may also be a published checkpoint (a name of ``PUBLISHED``): its encoder is built with the
    entry's configuration updated by ``config`` and the file is loaded with its key mapping
    (:func:`~common.networks.published.load_published`).

    ``fused_attention`` / ``channels_last``: performance switches, same weights and outputs
    (:func:`~common.networks.options.network_options`); off by default, not part of the encoder's config."""
    if pretrained_encoder and weights:
        raise ValueError("build_encoder: give the weights file as pretrained_encoder or weights, not both")
    path = pretrained_encoder or weights
    if name in PUBLISHED:
        entry = PUBLISHED[name]
        encoder = ENCODERS[entry.encoder](**{**entry.config, **config})
        if path:
            load_published(encoder, path, name)
    elif name in ENCODERS:
        encoder = ENCODERS[name](**config)
        if path:
            load_encoder(encoder, path)
    else:
        raise ValueError(
            f"unknown encoder {name!r}; choose an encoder of {sorted(ENCODERS)} or a published checkpoint of "
            f"{sorted(PUBLISHED)}"
        )
    return network_options(encoder, fused_attention, channels_last, encoder.spatial_dims)


def encoder_spec(meta: Mapping, path: str | os.PathLike = "<meta>") -> tuple[str, dict]:
    """``(name, config)`` recorded in an encoder file's meta."""
    if "encoder" in meta:
        return str(meta["encoder"]), dict(meta.get("encoder_config", {}))
    if all(k in meta for k in LEGACY_SWIN_META):
        return "swin", {k: meta[k] for k in LEGACY_SWIN_META}
    raise EncoderLoadError(
        f"{path}: the file's meta does not say which encoder it holds (no 'encoder' key; meta keys: "
        f"{sorted(meta)}); build the encoder with build_encoder(name, path, **config) instead"
    )


def encoder_from_file(path: str | os.PathLike, **overrides) -> nn.Module:
    """The encoder an encoder file describes (its meta's ``encoder`` and ``encoder_config``, updated by
    ``overrides``), with the file's weights loaded."""
    _, meta = read_encoder_file(path)
    name, config = encoder_spec(meta, path)
    return build_encoder(name, path, **{**config, **overrides})
