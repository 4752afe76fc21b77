"""Transfer of a whole supervised pre-trained segmenter to a new class list.

SuPreM (Li et al., "How Well Do Supervised 3D Models Transfer to Medical Imaging Tasks?", ICLR 2024)
pre-trains U-Net, SegResNet and Swin UNETR on multi-organ CT segmentation and transfers them by loading
every layer except the output layer, which is re-initialised for the new classes, then fine-tuning.
:func:`load_network_except_output` does that for any checkpoint of the collection's segmenters
(``common.networks.build_segmenter``, ``pretrained_network=``); :func:`load_suprem_checkpoint` imports
SuPreM's released checkpoints, whose layouts are

* Swin UNETR: ``{"net": {"module.backbone.<MONAI SwinUNETR key>": ..., "module.<head>": ...}}``: the
  backbone of SuPreM's ``Universal_model`` is MONAI's SwinUNETR; its class-conditional head
  (``precls_conv``, ``GAP``, ``controller``, ``text_to_vision``, ``organ_embedding``) is ignored;
* SegResNet: ``{"net": {"module.<MONAI SegResNet key>": ...}}`` (init_filters 16, blocks_down (1, 2, 2, 4),
  blocks_up (1, 1, 1));
* U-Net: Models Genesis' ``UNet3D`` (keys ``module.backbone.down_tr64.ops.0.conv1.weight``, ...,
  ``out_tr.final_conv.*``), an architecture different from MONAI's UNet: refused with an explanation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
from monai.networks.nets import SegResNet, SwinUNETR, UNet
from torch import nn

from .pretrained import (
    KNOWN_PREFIXES,
    EncoderLoadError,
    map_encoder_keys,
    read_encoder_file,
    state_dict_problems,
)

# keys (wrapper prefixes stripped) of the class-conditional head of SuPreM's Universal_model
SUPREM_HEAD_PREFIXES = ("precls_conv.", "GAP.", "controller.", "text_to_vision.", "organ_embedding")
# keys (wrapper prefixes stripped) of Models Genesis' UNet3D, SuPreM's U-Net backbone
UNET3D_PREFIXES = ("down_tr", "up_tr", "out_tr.")


def output_layer_prefixes(net: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of ``net``'s output layer: the parameters whose shapes depend on out_channels.

    SwinUNETR: ``out.`` (a 1x1x1 convolution). SegResNet: ``conv_final.2.`` (``conv_final`` is norm, act,
    conv; only the conv depends on the classes). MONAI UNet: the top-level up-path block ``model.2``, a
    transposed convolution to out_channels (``model.2.0.conv.``, its norm ``model.2.0.adn.N.`` when affine)
    and, with residual units, a residual unit on out_channels (``model.2.1.``); its activation's single
    PReLU slope does not depend on the classes and is loaded.
    """
    if isinstance(net, SwinUNETR):
        return ("out.",)
    if isinstance(net, SegResNet):
        return ("conv_final.2.",)
    if isinstance(net, UNet):
        if net.num_res_units == 0:
            return ("model.2.",)  # a single convolution (conv_only at the top)
        return ("model.2.0.conv.", "model.2.0.adn.N.", "model.2.1.")
    raise TypeError(f"no known output layer for {type(net).__name__} (expected SwinUNETR, SegResNet or UNet)")


def _bare(key: str) -> str:
    """``key`` without its wrapper prefixes (``module.backbone.GAP.0.weight`` -> ``GAP.0.weight``)."""
    while key.startswith(KNOWN_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _load_except_output(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    ignore_prefixes: Iterable[str] = (),
) -> dict:
    output = output_layer_prefixes(net)
    ignore = tuple(ignore_prefixes)
    own = net.state_dict()
    ignored = sorted(k for k in state if ignore and _bare(k).startswith(ignore))
    mapped = map_encoder_keys({k: v for k, v in state.items() if k not in ignored}, own)
    skipped = sorted(k for k in mapped if k.startswith(output))
    mapped = {k: v for k, v in mapped.items() if not k.startswith(output)}
    kept = {k: v for k, v in own.items() if not k.startswith(output)}
    problems = state_dict_problems(kept, mapped)
    if problems:
        header = (
            f"{path}: network weights do not fit {type(net).__name__} "
            f"(output layer {', '.join(output)} excluded)"
        )
        raise EncoderLoadError("\n".join([header, *problems]))
    net.load_state_dict({**own, **mapped})
    return {"loaded": len(mapped), "skipped_output": skipped, "ignored": ignored}


def load_network_except_output(net: nn.Module, path: str | os.PathLike) -> dict:
    """Load every layer of ``net`` from the checkpoint at ``path`` except its output layer.

    The output layer (:func:`output_layer_prefixes`) keeps its fresh initialisation, so a network
    pre-trained on one class list transfers to another (SuPreM, Li et al., ICLR 2024). The file is read
    with ``torch.load(..., weights_only=True)``: a bare state dict, ``{"model": ...}`` (MONAI
    CheckpointSaver), ``{"network": ...}``, ``{"state_dict": ...}`` or ``{"net": ...}``; wrapper prefixes
    (``module.``, ``backbone.``, ...) are stripped. Every non-output key of ``net`` must be in the file with
    the same shape and the file may hold no other keys, else :class:`EncoderLoadError` names the file and
    lists the missing, unexpected and shape-mismatched keys.

    Returns ``{"loaded": number of tensors loaded, "skipped_output": the file's output-layer keys,
    "ignored": []}``.
    """
    state, _ = read_encoder_file(path)
    return _load_except_output(net, state, path)


def load_suprem_checkpoint(net: nn.Module, path: str | os.PathLike) -> dict:
    """Load a released SuPreM checkpoint (Li et al., ICLR 2024) into ``net`` except its output layer.

    As :func:`load_network_except_output`, and the keys of SuPreM's class-conditional head
    (:data:`SUPREM_HEAD_PREFIXES`) are ignored and listed under ``"ignored"`` in the returned report.
    SuPreM's U-Net checkpoints (Models Genesis' UNet3D, a different architecture from MONAI's UNet) raise
    :class:`EncoderLoadError`; its SegResNet and Swin UNETR checkpoints load into the collection's
    ``segresnet`` and ``swinunetr`` segmenters (see the module docstring for the layouts).
    """
    state, _ = read_encoder_file(path)
    unet3d = sorted(k for k in state if _bare(k).startswith(UNET3D_PREFIXES))
    if unet3d:
        raise EncoderLoadError(
            f"{path}: a SuPreM U-Net checkpoint (Models Genesis' UNet3D layout, e.g. {unet3d[0]}): this "
            f"architecture differs from MONAI's UNet and does not load into {type(net).__name__}; SuPreM's "
            "segresnet and swinunetr checkpoints are supported"
        )
    return _load_except_output(net, state, path, SUPREM_HEAD_PREFIXES)
