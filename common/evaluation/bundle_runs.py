"""Running the collection's bundles from Python, in this process, through ``monai.bundle``'s
:class:`~monai.bundle.ConfigWorkflow` (the same path as ``python -m monai.bundle run``), and reading back
their metrics: what the transfer pipelines of ``tools/`` are made of.

Every run writes under its own ``work_dir`` (``ckpt_dir`` = ``work_dir/models``, ``output_dir`` =
``work_dir/eval``); nothing is written inside the bundle folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from ..atomic import atomic_path
from ..bundle import REPO_ROOT


def bundle_dir(bundle: str) -> Path:
    """``bundles/<bundle>`` of this repository; a clear error when there is none."""
    path = REPO_ROOT / "bundles" / bundle
    if not (path / "configs").is_dir():
        raise FileNotFoundError(f"no bundle {bundle!r} under {REPO_ROOT / 'bundles'}")
    return path


def workflow(
    bundle: str, configs: Sequence[str], run_id: str, work_dir: str | os.PathLike, **overrides
) -> ConfigWorkflow:
    """An initialised train-type workflow of ``bundle`` over ``configs`` (file names in its ``configs/``)
    running ``run_id``, with ``ckpt_dir`` / ``output_dir`` under ``work_dir`` and ``overrides``."""
    root = bundle_dir(bundle)
    work_dir = Path(work_dir)
    flow = ConfigWorkflow(
        config_file=[str(root / "configs" / name) for name in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="train",
        run_id=run_id,
        ckpt_dir=str(work_dir / "models"),
        output_dir=str(work_dir / "eval"),
        **overrides,
    )
    flow.initialize()
    return flow


def train(bundle: str, work_dir: str | os.PathLike, **overrides) -> Path:
    """Run ``bundle``'s ``training`` (``train.json``) and return its checkpoint folder."""
    flow = workflow(bundle, ["train.json"], "training", work_dir, **overrides)
    flow.run()
    flow.finalize()
    return Path(work_dir) / "models"


def evaluate(bundle: str, work_dir: str | os.PathLike, metric: str, **overrides) -> dict[str, float]:
    """Run ``bundle``'s ``evaluating`` (``train.json`` + ``evaluate.json``: the best checkpoint of
    ``work_dir/models`` on the test key) and return the evaluator's metrics (``metric`` and its relatives
    such as ``<metric>_dice``)."""
    flow = workflow(bundle, ["train.json", "evaluate.json"], "evaluating", work_dir, **overrides)
    flow.run()
    metrics = dict(flow.parser.get_parsed_content("validate#evaluator").state.metrics)
    flow.finalize()
    if metric not in metrics:
        raise KeyError(f"{bundle}: evaluation produced no {metric!r} (metrics: {sorted(metrics)})")
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.generic, np.ndarray, torch.Tensor))
    }


def export_torchscript(
    bundle: str, work_dir: str | os.PathLike, input_shape: Sequence[int], **overrides
) -> Path:
    """Trace the network of ``bundle`` with the best checkpoint of ``work_dir/models`` (``model.pt``) into
    ``work_dir/models/model.ts``, e.g. to serve as a frozen teacher elsewhere."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "train.json"))
    parser.update(overrides)
    network = parser.get_parsed_content("network_def").eval()
    state = torch.load(Path(work_dir) / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    traced = torch.jit.trace(network, torch.rand(*input_shape))
    out = Path(work_dir) / "models" / "model.ts"
    with atomic_path(out) as tmp:
        traced.save(str(tmp))
    return out
