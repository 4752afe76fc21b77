"""Classification on any encoder of the collection (DINOv2-radiology protocols, papers/004; Coda's and
LeADER's transfer: a linear layer on the encoder).

:class:`EncoderClassifier` is ``head(embedding(x))`` with a linear ``head``; the embedding is the encoder's
pooled output, or the [CLS] token concatenated with the mean patch token (``features="cls+mean_patch"``, for
encoders with a [CLS] token). :class:`SliceAveragedEncoder` runs a 2D encoder over the slices of a 3D
volume and averages the slice embeddings (the paper's protocol for 3D volumes through a 2D encoder).
:func:`build_classifier` assembles one from a config, an encoder file and a fine-tuning protocol
(``common.networks.peft``: full, linear, LoRA, BitFit).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .encoder_decoder import map_slices, to_slices
from .encoders import build_encoder
from .peft import apply_peft

FEATURE_VIEWS = ("pooled", "cls", "cls+mean_patch")


def embed(encoder: nn.Module, x: torch.Tensor, view: str = "pooled") -> torch.Tensor:
    """One embedding per input: ``encoder(x)`` (``"pooled"``), the [CLS] token (``"cls"``) or [CLS]
    concatenated with the mean patch token (``"cls+mean_patch"``), from ``encoder.tokens(x) -> (cls,
    patches)``; ``ValueError`` when the encoder has no [CLS] token."""
    if view not in FEATURE_VIEWS:
        raise ValueError(f"view must be one of {FEATURE_VIEWS}, got {view!r}")
    if view == "pooled":
        return encoder(x)
    cls, patches = encoder.tokens(x)
    if cls is None:
        raise ValueError(f"{type(encoder).__name__} has no [CLS] token: use view='pooled'")
    return token_embedding(cls, patches, view)


def token_embedding(cls: torch.Tensor, patches: torch.Tensor, view: str) -> torch.Tensor:
    """The ``"cls"`` view (``cls``) or the ``"cls+mean_patch"`` view ([CLS] concatenated with the mean of
    ``patches (B, N, D)``); TorchScript-compatible (used by the scripted classifier too)."""
    return cls if view == "cls" else torch.cat([cls, patches.mean(1)], dim=-1)


def slice_average_embedding(
    encoder_2d: nn.Module, volume: torch.Tensor, axis: int = -1, batch: int = 32
) -> torch.Tensor:
    """A 3D volume ``(B, C, H, W, D)`` through a 2D encoder: the mean over the slices along spatial ``axis``
    (2, 3, 4 or -3, -2, -1) of the slice embeddings, ``batch`` slices per encoder call: ``(B, E)``."""
    return map_slices(encoder_2d, volume, axis, batch).mean(1)


class SliceAveragedEncoder(nn.Module):
    """A 2D encoder applied to every slice along the last axis of ``(B, C, H, W, D)`` volumes, the slice
    embeddings averaged (:func:`slice_average_embedding`): ``(B, out_dim)``."""

    def __init__(self, encoder: nn.Module, slice_batch: int = 32) -> None:
        super().__init__()
        if encoder.spatial_dims != 2:
            raise ValueError(f"slice averaging needs a 2D encoder, got spatial_dims={encoder.spatial_dims}")
        self.encoder, self.slice_batch = encoder, slice_batch
        self.spatial_dims, self.out_dim = 3, encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # slice_average_embedding, spelled out for TorchScript (no module argument)
        embeddings = torch.cat([self.encoder(chunk) for chunk in to_slices(x, -1).split(self.slice_batch)])
        return embeddings.unflatten(0, [x.shape[0], -1]).mean(1)


class EncoderClassifier(nn.Module):
    """``head(embed(encoder, x, features))``; ``head`` is one linear layer (parameters named ``head.*``).
    An encoder with no trainable parameter (linear probing) stays in eval mode when the classifier trains,
    so its normalisation statistics and dropout do not change."""

    def __init__(self, encoder: nn.Module, num_classes: int, features: str = "pooled") -> None:
        super().__init__()
        if features not in FEATURE_VIEWS:
            raise ValueError(f"features must be one of {FEATURE_VIEWS}, got {features!r}")
        self.encoder, self.features = encoder, features
        width = encoder.out_dim * (2 if features == "cls+mean_patch" else 1)
        self.head = nn.Linear(width, num_classes)

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # :func:`embed` with the view checked at construction, written so that TorchScript can script it
        # (``ckpt_export`` scripts): no module argument, no f-string.
        if self.features == "pooled":
            return self.head(self.encoder(x))
        if hasattr(self.encoder, "tokens"):  # a slice-averaged encoder has no token view
            cls, patches = self.encoder.tokens(x)
            if cls is not None:
                return self.head(token_embedding(cls, patches, self.features))
        raise ValueError("the encoder has no [CLS] token: use features='pooled'")


def input_encoder(
    encoder_name: str,
    encoder_config: dict,
    pretrained_encoder: str | os.PathLike | None = None,
    slice_average: bool = False,
) -> nn.Module:
    """``build_encoder(encoder_name, pretrained_encoder, **encoder_config)``, wrapped in
    :class:`SliceAveragedEncoder` with ``slice_average`` (3D volumes through a 2D encoder)."""
    encoder = build_encoder(encoder_name, pretrained_encoder, **encoder_config)
    return SliceAveragedEncoder(encoder) if slice_average else encoder


def build_classifier(
    encoder_name: str,
    encoder_config: dict,
    num_classes: int,
    pretrained_encoder: str | os.PathLike | None = None,
    protocol: str = "full",
    features: str = "pooled",
    slice_average: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: tuple[str, ...] = ("qkv",),
) -> EncoderClassifier:
    """An :class:`EncoderClassifier` on ``build_encoder(encoder_name, pretrained_encoder, **encoder_config)``
    (wrapped in :class:`SliceAveragedEncoder` with ``slice_average``), prepared for ``protocol``: ``full``
    fine-tuning, ``linear`` probing (frozen encoder), ``lora`` or ``bitfit`` (the head always trains)."""
    encoder = input_encoder(encoder_name, encoder_config, pretrained_encoder, slice_average)
    model = EncoderClassifier(encoder, num_classes, features)
    lora = {"rank": lora_rank, "alpha": lora_alpha, "target_modules": tuple(lora_targets)}
    apply_peft(model, protocol, head_prefix="head.", **(lora if protocol == "lora" else {}))
    return model
