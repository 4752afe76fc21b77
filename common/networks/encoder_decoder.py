"""Segmentation on a frozen encoder, in 2D, 3D, and 3D through a 2D encoder (papers/004, Sec. 3.3.2).

DINOv2-radiology keeps the encoder frozen and trains only a decoder (``common.networks.decoders``) on its
features; "for processing 3D volumes, we segmented each slice independently". :class:`EncoderDecoder` is
``decoder(encoder.features(x), input size)`` with the encoder frozen (no gradient, eval mode kept while
training, so its normalisation statistics and dropout do not move); :class:`SliceWise` runs a 2D segmenter
over the slices of a volume; :func:`build_frozen_segmenter` assembles either for a bundle config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .decoders import DECODERS, set_decoder_blocks
from .encoders import build_encoder


def feature_spec(encoder: nn.Module, spatial_size: Sequence[int], in_channels: int = 1) -> tuple[int, ...]:
    """The channels of ``encoder.features`` maps: its ``feature_channels`` attribute, or, for an encoder
    without one, read from one forward pass of a zero input ``(1, in_channels, *spatial_size)`` (in eval
    mode, without gradient; the encoder's mode is restored)."""
    declared = getattr(encoder, "feature_channels", None)
    if declared is not None:
        return tuple(int(c) for c in declared)
    was_training = encoder.training
    encoder.eval()
    try:
        parameter = next(encoder.parameters(), None)
        device = parameter.device if parameter is not None else None
        with torch.no_grad():
            maps = encoder.features(torch.zeros(1, in_channels, *spatial_size, device=device))
    finally:
        encoder.train(was_training)
    return tuple(int(m.shape[1]) for m in maps)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require gradients (what an optimiser should update)."""
    return [p for p in model.parameters() if p.requires_grad]


class EncoderDecoder(nn.Module):
    """``decoder(encoder.features(x), x.shape[2:])``: class logits at the input size.

    With ``freeze_encoder`` the encoder's parameters do not require gradients, its features are computed
    under ``torch.no_grad`` and it stays in eval mode when the model is put in training mode; only the
    decoder learns (:meth:`trainable_parameters`).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, freeze_encoder: bool = True) -> None:
        super().__init__()
        self.encoder, self.decoder, self.freeze_encoder = encoder, decoder, freeze_encoder
        self.spatial_dims = encoder.spatial_dims
        if freeze_encoder:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> EncoderDecoder:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should update (the decoder's alone when the encoder is frozen)."""
        return trainable_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:  # two branches, not a conditional context manager: TorchScript scripts it
            with torch.no_grad():
                features = self.encoder.features(x)
        else:
            features = self.encoder.features(x)
        return self.decoder(features, x.shape[2:])


def to_slices(volume: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """The slices of a volume ``(B, C, H, W, D)`` along the spatial ``axis`` (2, 3, 4 or -3, -2, -1) as one
    batch ``(B * S, C, h, w)``, volume by volume (``.unflatten(0, [B, -1])`` restores ``(B, S, ...)``).
    TorchScript code, as the forward of the slice-wise modules that call it."""
    if volume.ndim != 5:
        raise ValueError(f"expected volumes (B, C, H, W, D), got shape {list(volume.shape)}")
    if axis not in [2, 3, 4, -3, -2, -1]:
        raise ValueError(
            f"axis must be a spatial axis of (B, C, H, W, D) (2, 3, 4 or -3, -2, -1), got {axis}"
        )
    return volume.movedim(axis, 1).flatten(0, 1)  # the slices next to the batch axis, then merged with it


def map_slices(network: nn.Module, volume: torch.Tensor, axis: int = -1, batch: int = 16) -> torch.Tensor:
    """``network`` applied to every slice of a volume ``(B, C, H, W, D)`` along the spatial ``axis``,
    ``batch`` slices per call: ``(B, S, *output of one slice)``, S the number of slices."""
    outputs = torch.cat([network(chunk) for chunk in to_slices(volume, axis).split(batch)])
    return outputs.unflatten(0, [volume.shape[0], -1])


class SliceWise(nn.Module):
    """A 3D volume ``(B, C, H, W, D)`` segmented slice by slice with a 2D segmenter: the slices along the
    spatial ``axis`` (2, 3, 4 or -3, -2, -1) go through ``segmenter_2d`` ``batch`` at a time and their logits
    are stacked back in place: ``(B, K, H, W, D)``."""

    def __init__(self, segmenter_2d: nn.Module, axis: int = -1, batch: int = 16) -> None:
        super().__init__()
        if axis not in (2, 3, 4, -3, -2, -1):
            raise ValueError(
                f"axis must be a spatial axis of (B, C, H, W, D) (2, 3, 4 or -3, -2, -1), got {axis}"
            )
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.segmenter, self.axis, self.batch = segmenter_2d, axis, batch
        self.spatial_dims = 3

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        # map_slices, spelled out for TorchScript (no module argument); (B, S, K, h, w) -> the slice axis
        # back where it came from
        chunks = to_slices(volume, self.axis).split(self.batch)
        logits = torch.cat([self.segmenter(chunk) for chunk in chunks])
        return logits.unflatten(0, [volume.shape[0], -1]).movedim(1, self.axis)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should update (those of the 2D segmenter that require gradients)."""
        return trainable_parameters(self)


def build_frozen_segmenter(
    encoder: nn.Module,
    num_classes: int,
    decoder: str = "linear",
    freeze_encoder: bool = True,
    *,
    spatial_size: Sequence[int],
    in_channels: int = 1,
    slice_batch: int = 16,
    decoder_blocks: str = "last",
    **decoder_args,
) -> EncoderDecoder | SliceWise:
    """A segmenter on ``encoder``: an :class:`EncoderDecoder` with a ``"linear"``
    (:class:`~common.networks.decoders.LinearDecoder`) or ``"unet"``
    (:class:`~common.networks.decoders.UNetDecoder`) decoder, built with ``decoder_args``.

    ``spatial_size`` is the input size; a 3-entry size with a 2D encoder means volumes segmented slice by
    slice along their last axis (:class:`SliceWise`, ``slice_batch`` slices at a time). ``in_channels`` and
    ``spatial_size`` are only used to read the feature channels of an encoder that does not declare them
    (:func:`feature_spec`). ``decoder_blocks``: which blocks of a ViT feed the decoder, ``"last"`` four
    (DINOv2), ``"spread"`` over the depth, or ``"encoder"``: the ViT's own ``feature_blocks``
    (:func:`~common.networks.decoders.set_decoder_blocks`).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    dims = encoder.spatial_dims
    slice_wise = dims == 2 and len(spatial_size) == 3
    if len(spatial_size) != dims and not slice_wise:
        raise ValueError(
            f"spatial_size {tuple(spatial_size)} does not fit a {dims}D encoder "
            "(give 2 entries for a 2D encoder on images or 3 for volumes segmented slice by slice)"
        )
    set_decoder_blocks(encoder, decoder_blocks)
    channels = feature_spec(encoder, spatial_size[:dims], in_channels)
    head = DECODERS[decoder](channels, num_classes, spatial_dims=dims, **decoder_args)
    model = EncoderDecoder(encoder, head, freeze_encoder)
    return SliceWise(model, axis=-1, batch=slice_batch) if slice_wise else model


def build_encoder_segmenter(
    encoder_name: str,
    encoder_config: dict,
    num_classes: int,
    spatial_size: Sequence[int],
    pretrained_encoder: str | os.PathLike | None = None,
    decoder: str = "unet",
    freeze_encoder: bool = False,
    decoder_blocks: str = "last",
) -> EncoderDecoder | SliceWise:
    """:func:`build_frozen_segmenter` on the encoder
    ``build_encoder(encoder_name, pretrained_encoder, **encoder_config)``: the segmentation bundles'
    network. A pre-trained encoder with a random decoder is Coda's and LeADER's full transfer
    (``freeze_encoder=False``) or DINOv2-radiology's frozen protocol (``True``); ``decoder_blocks`` as
    :func:`build_frozen_segmenter`'s."""
    encoder = build_encoder(encoder_name, pretrained_encoder, **encoder_config)
    in_channels = encoder_config.get("in_channels", 1)
    return build_frozen_segmenter(
        encoder,
        num_classes,
        decoder,
        freeze_encoder,
        spatial_size=spatial_size,
        in_channels=in_channels,
        decoder_blocks=decoder_blocks,
    )
