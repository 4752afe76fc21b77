"""Saving and loading pre-trained encoder files.

An *encoder file* is what every pre-training bundle writes and every downstream bundle reads: a
``torch.save`` of ``{"state_dict": {name: tensor}, "meta": {str: int | float | str | bool}}`` holding only
tensors and plain values, so it loads with ``torch.load(..., weights_only=True)``. The state-dict keys are
those of the bare encoder module (for Swin: MONAI's ``SwinTransformer``, the ``swinViT`` of ``SwinUNETR``).

Checkpoints written by other tools often carry wrapper prefixes (``module.`` from DDP, ``swinViT.``,
``encoder.``, ``backbone.``, ``student.``); :func:`map_encoder_keys` strips the longest such chain so that
they load as well.

:func:`read_encoder_file` also reads whole-network checkpoints (MONAI ``CheckpointSaver`` files, SuPreM's
``{"net": ...}`` files); ``common.networks.transfer`` loads those into a segmenter.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_torch_save

KNOWN_PREFIXES = (
    "module.",
    "model.",
    "student.",
    "teacher.",
    "backbone.",
    "encoder.",
    "swinViT.",
    "swin_vit.",
)


class EncoderLoadError(RuntimeError):
    """A weights file (encoder or whole network) is unreadable or does not fit the module it is loaded in."""


def save_encoder(module: nn.Module, path: str | os.PathLike, **meta) -> Path:
    """Write ``module``'s weights and ``meta`` to ``path`` atomically (:func:`common.atomic.atomic_path`:
    temporary file in the same folder, then ``os.replace``; a failed or interrupted write leaves the previous
    file as it was). ``meta`` may name the encoder (``encoder``, ``encoder_config``: see
    ``common.networks.encoders``)."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return atomic_torch_save({"state_dict": state, "meta": dict(meta)}, path)


def read_encoder_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, meta)`` of an encoder file or of a plain/bundle checkpoint.

    Accepts the collection's encoder files, MONAI bundle checkpoints (``{"network": state_dict, ...}`` or a
    bare state dict), MONAI ``CheckpointSaver`` files (``{"model": state_dict, "optimizer": ...}``), SuPreM
    checkpoints (``{"net": state_dict, "optimizer": ..., "epoch": ...}``), nnssl checkpoints
    (``{"network_weights": state_dict, "nnssl_adaptation_plan": ...}``) and ``{"state_dict": ...}``; and
    ``.safetensors`` files (the Hugging Face Hub's format; needs the ``safetensors`` package, installed with
    the ``published`` extra).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path), {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise EncoderLoadError(f"{path}: not a readable PyTorch weights file ({err})") from err
    meta = obj.get("meta", {}) if isinstance(obj, Mapping) else {}
    for key in ("state_dict", "network", "model", "net", "network_weights", "teacher", "student"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderLoadError(f"{path}: no state dict of tensors found (top-level keys: {list(obj)[:10]})")
    return dict(obj), dict(meta)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (no code is executed when reading it)."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise EncoderLoadError(
            f"{path}: reading .safetensors files needs the safetensors package (pip install "
            "'medfm-bundles[published]')"
        ) from err
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error type for damaged files
        raise EncoderLoadError(f"{path}: not a readable safetensors file ({err})") from err


def map_encoder_keys(state_dict: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> dict:
    """Strip wrapper prefixes from ``state_dict`` keys so that they match ``target_keys``.

    Each key loses leading prefixes from :data:`KNOWN_PREFIXES` until it names a target key; keys that
    never match are kept as they are (they are reported as unexpected by :func:`load_encoder`).
    """
    targets = set(target_keys)
    mapped = {}
    for key, value in state_dict.items():
        name = key
        while name not in targets and name.startswith(KNOWN_PREFIXES):
            name = name.split(".", 1)[1]
        mapped[name if name in targets else key] = value
    return mapped


def strip_prefixes(key: str) -> str:
    """``key`` without its leading wrapper prefixes (``module.backbone.GAP.0.weight`` -> ``GAP.0.weight``)."""
    while key.startswith(KNOWN_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def state_dict_problems(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], allow_missing: Iterable[str] = ()
) -> list[str]:
    """Lines listing the keys of ``own`` missing from ``state``, the unexpected keys of ``state`` and the
    shape mismatches (each list cut at 20 names); empty when ``state`` fits ``own``. Keys in
    ``allow_missing`` (exact names) may be absent."""
    missing = sorted(set(own) - set(state) - set(allow_missing))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    lines = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            lines.append(f"  {title} keys: {shown}")
    return lines


def load_encoder(encoder: nn.Module, path: str | os.PathLike, allow_missing: Iterable[str] = ()) -> dict:
    """Load the encoder file at ``path`` into ``encoder`` with a strict key and shape check.

    Raises :class:`EncoderLoadError` naming the file and listing missing keys, unexpected keys and shape
    mismatches. Keys listed in ``allow_missing`` (exact names) may be absent. Returns the file's meta.
    """
    state, meta = read_encoder_file(path)
    load_state_strict(encoder, state, f"{path}: encoder weights (meta: {meta})", allow_missing)
    return meta


def load_state_strict(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str, allow_missing: Iterable[str] = ()
) -> None:
    """Load ``state`` into ``encoder`` after :func:`map_encoder_keys`, with a strict key and shape check;
    :class:`EncoderLoadError` starts with ``source`` (the file and what it holds) and lists the problems."""
    own = encoder.state_dict()
    state = map_encoder_keys(state, own)
    problems = state_dict_problems(own, state, allow_missing)
    if problems:
        header = f"{source} do not fit {type(encoder).__name__}"
        raise EncoderLoadError("\n".join([header, *problems]))
    encoder.load_state_dict(state, strict=not allow_missing)
