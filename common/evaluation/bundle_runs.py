"""Running the collection's bundles from Python, in this process, through ``monai.bundle``'s
:class:`~monai.bundle.ConfigWorkflow` (the same path as ``python -m monai.bundle run``), and reading back
exporting a trained network: what the study runner's cells are made of (:mod:`common.study.execute`).

Every run writes under its own ``work_dir`` (``ckpt_dir`` = ``work_dir/models``, ``output_dir`` =
``work_dir/eval``); nothing is written inside the bundle folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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
    bundle: str,
    configs: Sequence[str],
    run_id: str,
    work_dir: str | os.PathLike,
    tracking: str | None = None,
    **overrides,
) -> ConfigWorkflow:
    """An initialised train-type workflow of ``bundle`` over ``configs`` (file names in its ``configs/``)
    running ``run_id``, with ``ckpt_dir`` / ``output_dir`` under ``work_dir`` (unless ``overrides`` set them)
    and ``overrides``;
    ``tracking="mlflow"`` adds MONAI's MLflow handlers (settings as overrides: ``tracking_uri``...)."""
    root = bundle_dir(bundle)
    work_dir = Path(work_dir)
    flow = ConfigWorkflow(
        config_file=[str(root / "configs" / name) for name in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="train",
        run_id=run_id,
        tracking=tracking,
        **{"ckpt_dir": str(work_dir / "models"), "output_dir": str(work_dir / "eval"), **overrides},
    )
    flow.initialize()
    return flow


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
