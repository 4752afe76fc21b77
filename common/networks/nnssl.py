"""The adaptation plan nnssl embeds in its checkpoints (https://github.com/MIC-DKFZ/nnssl).

An nnssl checkpoint (``checkpoint_final.pth`` of the OpenMind models) is a ``torch.save`` of
``{"network_weights": <ResidualEncoderUNet state dict>, "nnssl_adaptation_plan": {...}, ...}``; the plan says
how downstream data must look: ``pretrain_plan.configurations.<name>`` holds the ``spacing`` the volumes were
resampled to and the intensity ``normalization_schemes`` (e.g. ``ZScoreNormalization``), next to
``pretrain_num_input_channels``, ``recommended_downstream_patchsize`` and ``architecture_plans``.
:func:`nnssl_adaptation` reads them; the weights load with ``build_encoder("nnssl_resenc_l", weights=PATH)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .pretrained import EncoderLoadError

PLAN_KEY = "nnssl_adaptation_plan"


def _get(node: object, key: str, where: str) -> object:
    """``node[key]``; :class:`EncoderLoadError` naming ``where`` (file and path of keys) and ``key``."""
    if not isinstance(node, Mapping) or key not in node:
        found = sorted(node) if isinstance(node, Mapping) else type(node).__name__
        raise EncoderLoadError(f"{where}: no key {key!r} (found: {found})")
    return node[key]


def nnssl_adaptation(path: str | os.PathLike, configuration: str | None = None) -> dict:
    """Spacing and intensity normalisation of the nnssl checkpoint at ``path``, read from its embedded
    adaptation plan: ``{"spacing", "intensity" (normalisation schemes, one per channel), "use_mask_for_norm",
    "configuration", "in_channels", "patch_size" (recommended downstream), "architecture"}``.

    ``configuration`` picks one of ``pretrain_plan.configurations`` (needed when there are several).
    :class:`EncoderLoadError` names the file and the missing key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nnssl checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise EncoderLoadError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    plan = _get(checkpoint, PLAN_KEY, str(path))
    where = f"{path}: {PLAN_KEY}"
    configurations = _get(_get(plan, "pretrain_plan", where), "configurations", f"{where}.pretrain_plan")
    if configuration is None:
        if not isinstance(configurations, Mapping) or len(configurations) != 1:
            names = sorted(configurations) if isinstance(configurations, Mapping) else configurations
            raise EncoderLoadError(
                f"{where}.pretrain_plan.configurations: choose a configuration of {names} (configuration=...)"
            )
        configuration = next(iter(configurations))
    where_config = f"{where}.pretrain_plan.configurations"
    config = _get(configurations, configuration, where_config)
    where_config += f".{configuration}"
    return {
        "spacing": [float(s) for s in _get(config, "spacing", where_config)],
        "intensity": list(_get(config, "normalization_schemes", where_config)),
        "use_mask_for_norm": config.get("use_mask_for_norm"),
        "configuration": configuration,
        "in_channels": int(_get(plan, "pretrain_num_input_channels", where)),
        "patch_size": list(_get(plan, "recommended_downstream_patchsize", where)),
        "architecture": _get(_get(plan, "architecture_plans", where), "arch_class_name", where),
    }
