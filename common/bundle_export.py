"""Deployment exports of a bundle's inference network, checked as a user (and the model zoo) runs them.

- **TorchScript**: ``monai.bundle ckpt_export`` as the model zoo's ``ci/verify_bundle.py`` (mode ``full``)
  calls it: by *scripting* (``torch.jit.script``, MONAI's default). Only the networks of
  :data:`TRACED_MODULES` export by tracing (``--use_trace``), see there.
- **ONNX**: ``python -m monai.bundle onnx_export`` run as a command. With torch >= 2.9 MONAI 1.6.1 hands the
  eager network to ``torch.onnx.export``, whose default is the ``torch.export``-based exporter (it needs
  ``onnxscript``): shapes are fixed to the example input (no dynamic axes), ``--use_trace`` changes nothing.

Both checks load the export, run it and the eager network (weights from the same checkpoint) on the same
random input and compare: max |difference| at most :data:`TORCHSCRIPT_ATOL` (TorchScript) or
:data:`ONNX_ATOL` (ONNX Runtime, CPU). Failures raise :class:`~common.bundle_checks.BundleCheckError`
naming the file. Every network of the collection exports both ways (``docs/README.md`` of each bundle gives
the commands).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from common.bundle import REPO_ROOT
from common.bundle_checks import BundleCheckError, config_path, example_input_shape, model_weights

TORCHSCRIPT_ATOL = 1e-5
ONNX_ATOL = 1e-4
# The networks that export to TorchScript by tracing instead of scripting, and why: exactly those holding
# one of these modules. Bundles covered: the ten *_ssl_pretrain bundles (SwinEncoder), leader_pretrain
# (2D SwinEncoder), ct_organ_classification (classifier on a SwinEncoder), multiorgan_ct_segmentation
# (SwinUNETR or frozen_swin_*) and suprem_pretrain (SwinUNETR); with arch / backbone unet or segresnet these
# two script, as do coda_pretrain and the two radiograph bundles.
TRACED_MODULES: dict[type[nn.Module], str] = {
    SwinTransformer: (
        "MONAI's SwinTransformer cannot be scripted: torch.jit.script fails in MONAI's code (torch 2.13, "
        'MONAI 1.6.1: "Can\'t redefine method: forward on class SwinTransformerBlock", the 2D patch '
        "embedding unpacks a 5-entry shape, torch.utils.checkpoint takes **kwargs); the model zoo exempts "
        "its Swin bundle swin_unetr_btcv_segmentation from TorchScript for the same reason"
    ),
}


@dataclass(frozen=True)
class ExportResult:
    """An export that passed: its file, how it was made (``"script"``, ``"trace"`` or ``"onnx"``) and the
    max |export - eager| on the check's input."""

    path: Path
    method: str
    max_abs_diff: float


def inference_network(bundle: Path, **overrides) -> nn.Module:
    """``network_def`` of ``configs/inference.json`` read with the metadata, ``bundle_root`` the bundle
    folder and ``overrides`` (config ids) applied, as ``ckpt_export`` and ``onnx_export`` build it."""
    parser = ConfigParser()
    parser.read_config(config_path(bundle, "inference.json"))
    parser.read_meta(config_path(bundle, "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def tracing_reason(network: nn.Module) -> str | None:
    """Why ``network`` exports to TorchScript by tracing (:data:`TRACED_MODULES`), or ``None``: it scripts."""
    for module in network.modules():
        for cls, reason in TRACED_MODULES.items():
            if isinstance(module, cls):
                return reason
    return None


def _eager_with_weights(bundle: Path, ckpt: Path, overrides: dict) -> tuple[nn.Module, str]:
    """The eager network with the weights of ``ckpt`` (strict) and their key in the file."""
    weights, key_in_ckpt = model_weights(ckpt)
    network = inference_network(bundle, **overrides)
    network.load_state_dict(weights)
    return network.eval(), key_in_ckpt


def _example(shape: list[int]) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _max_diff(exported: Path, kind: str, expected: torch.Tensor, got: torch.Tensor, atol: float) -> float:
    if tuple(got.shape) != tuple(expected.shape):
        raise BundleCheckError(
            f"{exported}: {kind} output shape {tuple(got.shape)} differs from eager {tuple(expected.shape)}"
        )
    error = (expected - got).abs().max().item()
    if not error <= atol:
        raise BundleCheckError(f"{exported}: {kind} output differs from eager by {error:.2e} (> {atol:.0e})")
    return error


def check_torchscript_export(
    bundle: Path, ckpt: Path, work_dir: Path, input_shape: list[int] | None = None, **overrides
) -> ExportResult:
    """``monai.bundle.ckpt_export`` of ``ckpt`` as the model zoo runs it (scripting; tracing only for the
    networks of :data:`TRACED_MODULES`, on ``input_shape``, default :func:`example_input_shape`), then the
    TorchScript output must equal eager within :data:`TORCHSCRIPT_ATOL` on that input."""
    config = config_path(bundle, "inference.json")
    eager, key_in_ckpt = _eager_with_weights(bundle, ckpt, overrides)
    shape = list(input_shape or example_input_shape(bundle))
    use_trace = tracing_reason(eager) is not None
    exported = Path(work_dir) / "model.ts"
    exported.parent.mkdir(parents=True, exist_ok=True)
    try:
        ckpt_export(
            net_id="network_def",
            filepath=str(exported),
            ckpt_file=str(ckpt),
            meta_file=config_path(bundle, "metadata.json"),
            config_file=config,
            key_in_ckpt=key_in_ckpt,
            bundle_root=str(bundle),
            **({"use_trace": True, "input_shape": shape} if use_trace else {}),
            **overrides,
        )
    except Exception as e:  # torch.jit's frontend and compiler errors have no common base class
        method = "tracing" if use_trace else "scripting"
        raise BundleCheckError(f"{config}: ckpt_export of network_def by {method} failed: {e}") from e
    module = torch.jit.load(str(exported), map_location="cpu").eval()
    x = _example(shape)
    with torch.no_grad():
        error = _max_diff(exported, "TorchScript", eager(x), module(x), TORCHSCRIPT_ATOL)
    return ExportResult(exported, "trace" if use_trace else "script", error)


def onnx_export_command(
    bundle: Path, ckpt: Path, filepath: Path, input_shape: list[int], key_in_ckpt: str = ""
) -> list[str]:
    """The ``python -m monai.bundle onnx_export`` command line for the bundle's ``network_def``."""
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(filepath)]
    cmd += ["--ckpt_file", str(ckpt), "--meta_file", config_path(bundle, "metadata.json")]
    cmd += ["--config_file", config_path(bundle, "inference.json"), "--bundle_root", str(bundle)]
    cmd += ["--input_shape", json.dumps(list(input_shape))]
    return cmd + (["--key_in_ckpt", key_in_ckpt] if key_in_ckpt else [])


def check_onnx_export(
    bundle: Path,
    ckpt: Path,
    work_dir: Path,
    input_shape: list[int] | None = None,
    timeout: int = 600,
    **overrides,
) -> ExportResult:
    """``python -m monai.bundle onnx_export`` of ``ckpt`` run as a command (``overrides`` through its
    ``--args_file``) on ``input_shape`` (default :func:`example_input_shape`), then the ONNX Runtime (CPU)
    output must equal eager within :data:`ONNX_ATOL` on that input."""
    import onnxruntime  # the optional "export" dependency: imported where it is needed

    config = config_path(bundle, "inference.json")
    eager, key_in_ckpt = _eager_with_weights(bundle, ckpt, overrides)
    shape = list(input_shape or example_input_shape(bundle))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    exported = work_dir / "model.onnx"
    cmd = onnx_export_command(bundle, ckpt, exported, shape, key_in_ckpt)
    if overrides:
        args_file = work_dir / "onnx_export_overrides.json"
        args_file.write_text(json.dumps(overrides))
        cmd += ["--args_file", str(args_file)]
    # MONAI exports through a temporary file whose external-data sibling (torch's exporter writes one) it
    # leaves behind: keep the temporary files in work_dir
    env = {**os.environ, "TMPDIR": str(work_dir)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    if result.returncode != 0 or not exported.is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise BundleCheckError(f"{config}: onnx_export of network_def exited {result.returncode}:\n{tail}")
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = _example(shape)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        error = _max_diff(exported, "ONNX Runtime", eager(x), torch.from_numpy(np.asarray(got)), ONNX_ATOL)
    return ExportResult(exported, "onnx", error)
