"""Official DINOv2 weights in the collection's ViT.

DINOv2-radiology (papers/004) evaluates the DINOv2 ViTs (Oquab et al., 2023; ViT-S/B/L/g, patch 14,
pre-trained at 518 px) on radiology tasks. Users download the weights themselves (``torch.hub`` files
``dinov2_vit{s,b,l,g}14_pretrain.pth`` and, with four registers (Darcet et al., ICLR 2024),
``dinov2_vit{s,b,l,g}14_reg4_pretrain.pth``); :func:`dinov2_vit` builds the matching
:class:`~common.networks.vit.ViT` and :func:`load_dinov2_weights` maps the file's keys onto it:

- wrapper prefixes are removed: the backbone is found by its ``cls_token`` key, preferring the teacher's in
  training checkpoints that hold both (``teacher.backbone.``, ``student.backbone.``, ``module.``, ...);
- the chunked block layout of training checkpoints (``blocks.{chunk}.{i}.``, FSDP ``block_chunks > 0``)
  becomes ``blocks.{i}.``;
- ``pos_embed`` is resized to the ViT's patch grid (official files: 37 x 37 for 518 px; 16 x 16 for
  224 px) with :func:`~common.networks.vit.interpolate_pos_embed` and the ViT's own interpolation settings,
  the resize the source model does at run time, so the ViT at its ``img_size`` gives the source model's
  output. The settings differ by source (:data:`INTERPOLATION`): official DINOv2 scales by
  ``(grid + 0.1) / 37``; its registers models and Hugging Face ``transformers`` resize to the output size,
  the registers models with antialiasing;
- three key layouts are read (:data:`LAYOUTS`): the official one; ``timm``'s (``reg_token`` for the
  registers); Hugging Face ``transformers``' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (RAD-DINO's
  layout; ``embeddings.*``, ``encoder.layer.{i}.*`` with separate query, key and value projections, which
  are concatenated into ``qkv``, in the Hub files' names and in those of ``transformers`` 5);
- a file without ``mask_token`` keeps the ViT's;
- a ViT with one input channel receives the sum of the RGB patch-embedding filters over the colour axis:
  ``sum_c W_c * x`` equals the RGB network's response to the grey image replicated to three channels, so the
  one-channel ViT computes exactly what DINOv2 computes on ``(x, x, x)`` (normalise the grey image with one
  mean and standard deviation, e.g. the averages of ImageNet's per-channel values).

Anything else that does not fit raises :class:`~common.networks.pretrained.EncoderLoadError` naming the file
and listing missing, unexpected and shape-mismatched keys (e.g. a ViT-B file into a ViT-S).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from .pretrained import EncoderLoadError, read_encoder_file, state_dict_problems
from .vit import VIT_VARIANTS, ViT, interpolate_pos_embed

DINOV2_PATCH_SIZE = 14
DINOV2_LAYER_SCALE_INIT = 1e-5
BACKBONE_ANCHOR = "cls_token"
CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.\d+\.(\d+\..+)$")
OPTIONAL_KEYS = ("mask_token",)
HF_ANCHOR = "embeddings.cls_token"
# Hugging Face Dinov2 keys (prefix stripped) -> official keys; the first pattern that matches is used
HF_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.register_tokens$", "register_tokens"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
        (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
        (r"^encoder\.layer\.(\d+)\.(norm[12]|mlp)\.", r"blocks.\1.\2."),
        (r"^layernorm\.", "norm."),
    )
)
HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$"
)
QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}
# (interpolate_offset, interpolate_antialias) of the source models' position-embedding resize
INTERPOLATION = {"official": (0.1, False), "registers": (0.0, True), "hf": (0.0, False)}
PATCH_WEIGHT = "patch_embed.proj.weight"
RGB_CHANNELS = 3


def backbone_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ViT's keys of a DINOv2 checkpoint, prefixes stripped and block chunks flattened.

    The backbone's prefix is that of its ``cls_token`` key; with several (student and teacher of a training
    checkpoint) the teacher's, which DINOv2 evaluates, is taken, then the shortest.
    """
    prefixes = [
        k[: -len(BACKBONE_ANCHOR)] for k in state if k == BACKBONE_ANCHOR or k.endswith("." + BACKBONE_ANCHOR)
    ]
    if not prefixes:
        raise EncoderLoadError(
            f"{source}: no DINOv2 backbone found (no '{BACKBONE_ANCHOR}' key; first keys: {list(state)[:10]})"
        )
    prefix = min(prefixes, key=lambda p: ("teacher." not in p, len(p)))
    backbone = {}
    for key, value in state.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            chunked = CHUNKED_BLOCK_KEY.match(name)
            backbone["blocks." + chunked.group(1) if chunked else name] = value
    return backbone


def hf_backbone_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dict (any prefix before
    ``embeddings.cls_token``, e.g. ``dinov2.``) in the official layout; unknown keys are kept (and reported
    as unexpected)."""
    prefixes = [k[: -len(HF_ANCHOR)] for k in state if k == HF_ANCHOR or k.endswith("." + HF_ANCHOR)]
    if not prefixes:
        raise EncoderLoadError(
            f"{source}: no Hugging Face DINOv2 backbone found (no '{HF_ANCHOR}' key; first keys: "
            f"{list(state)[:10]})"
        )
    prefix = min(prefixes, key=len)
    official, qkv = {}, {}
    for key, value in state.items():
        if not key.startswith(prefix):
            official[key] = value
            continue
        name = key[len(prefix) :]
        split = HF_QKV.match(name)
        if split:
            qkv.setdefault((split.group(1), split.group(3)), [None] * 3)[QKV_ORDER[split.group(2)]] = value
            continue
        for pattern, replacement in HF_RENAMES:
            if pattern.match(name):
                name = pattern.sub(replacement, name)
                break
        official[name] = value
    for (block, kind), parts in qkv.items():
        if any(part is None for part in parts):
            raise EncoderLoadError(f"{source}: block {block} lacks a query, key or value {kind}")
        official[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return official


def timm_backbone_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A ``timm`` DINOv2 state dict (``vit_*_patch14_dinov2*``) in the official layout: the official keys
    except ``reg_token`` for the registers."""
    return {
        ("register_tokens" if k == "reg_token" else k): v for k, v in backbone_state(state, source).items()
    }


LAYOUTS = {"official": backbone_state, "timm": timm_backbone_state, "hf": hf_backbone_state}


def _fit_to(vit: ViT, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Resize ``pos_embed`` to the ViT's grid and sum RGB patch filters for a one-channel ViT (module doc)."""
    own = vit.state_dict()
    pos = state.get("pos_embed")
    if (
        pos is not None
        and pos.shape != own["pos_embed"].shape
        and pos.shape[-1] == own["pos_embed"].shape[-1]
    ):
        try:
            state["pos_embed"] = interpolate_pos_embed(
                pos, (vit.grid, vit.grid), vit.interpolate_offset, vit.interpolate_antialias
            )
        except ValueError as err:
            raise EncoderLoadError(f"{source}: cannot resize pos_embed: {err}") from err
    weight = state.get(PATCH_WEIGHT)
    if weight is not None and vit.in_channels == 1 and weight.ndim == 4 and weight.shape[1] == RGB_CHANNELS:
        state[PATCH_WEIGHT] = weight.sum(dim=1, keepdim=True)
    return state


def load_dinov2_weights(
    vit: ViT, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], layout: str = "official"
) -> ViT:
    """Load a DINOv2 checkpoint (a file path, read with ``weights_only=True``, or a state dict) in the key
    ``layout`` (a name of :data:`LAYOUTS`) into ``vit`` with the key mapping of the module doc and a strict
    key and shape check; returns ``vit``.

    Raises :class:`EncoderLoadError` naming the file and listing the keys that do not fit.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown DINOv2 key layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if isinstance(path_or_state_dict, Mapping):
        source, state = "<state dict>", dict(path_or_state_dict)
    else:
        source, state = str(path_or_state_dict), read_encoder_file(path_or_state_dict)[0]
    state = _fit_to(vit, LAYOUTS[layout](state, source), source)
    problems = state_dict_problems(vit.state_dict(), state, allow_missing=OPTIONAL_KEYS)
    if problems:
        header = f"{source}: DINOv2 weights do not fit {type(vit).__name__}(embed_dim={vit.out_dim}, ...)"
        raise EncoderLoadError("\n".join([header, *problems]))
    vit.load_state_dict(state, strict=all(k in state for k in OPTIONAL_KEYS))
    return vit


def dinov2_vit(
    variant: str = "small",
    registers: int = 0,
    img_size: int = 224,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    in_channels: int = 3,
    layout: str = "official",
) -> ViT:
    """The ViT of DINOv2's hub model ``dinov2_vit{s,b,l,g}14[_reg4]``
    (:data:`~common.networks.vit.VIT_VARIANTS`, patch 14, LayerScale) with ``registers`` register tokens,
    position embeddings for ``img_size`` resized as the source model of ``layout`` resizes them
    (:data:`INTERPOLATION`), loaded from ``weights`` when given (:func:`load_dinov2_weights`)."""
    vit = ViT(**dinov2_vit_config(variant, registers, img_size, in_channels, layout))
    if weights is not None:
        load_dinov2_weights(vit, weights, layout)
    return vit


def dinov2_vit_config(
    variant: str = "small",
    registers: int = 0,
    img_size: int = 224,
    in_channels: int = 3,
    layout: str = "official",
) -> dict:
    """The :class:`~common.networks.vit.ViT` arguments of :func:`dinov2_vit`; the position-embedding resize is
    that of the source model of ``layout`` (:data:`INTERPOLATION`)."""
    if variant not in VIT_VARIANTS:
        raise ValueError(f"unknown DINOv2 variant {variant!r}; choose one of {sorted(VIT_VARIANTS)}")
    offset, antialias = INTERPOLATION["registers" if registers else ("hf" if layout == "hf" else "official")]
    return {
        "in_channels": in_channels,
        "img_size": img_size,
        "patch_size": DINOV2_PATCH_SIZE,
        "num_register_tokens": registers,
        "layer_scale_init": DINOV2_LAYER_SCALE_INIT,
        "interpolate_offset": offset,
        "interpolate_antialias": antialias,
        **VIT_VARIANTS[variant],
    }
