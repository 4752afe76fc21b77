"""One cell of the pre-training benchmark matrix: (encoder, task, shots, seed) -> held-out Dice.

:func:`pretrain_ssl` runs a self-supervised pre-training bundle (``<method>_ssl_pretrain``) at a CPU-sized
configuration and returns its encoder file; :func:`run_cell` fine-tunes the segmentation bundle
(``multiorgan_ct_segmentation``, SwinUNETR) from an encoder file -- or from scratch -- on a few-shot split,
scores the held-out subject (:func:`~common.evaluation.heldout.finetune_and_evaluate`) and logs the
training curves to one MLflow store shared by every cell.

MLflow: the bundle runs with ``tracking="mlflow"`` (MONAI's ``DEFAULT_MLFLOW_SETTINGS``). Those settings
only add the config ids ``tracking_uri``, ``experiment_name`` and ``run_name`` where the bundle config
lacks them, so passing them as overrides points every cell at the same SQLite store
(``tracking_uri``), in the experiment named after the task (the bundle's ``experiment_name``), under the
run name ``<method>_<shots>shot_seed<seed>``. MONAI's ``MLFlowHandler`` sets no tags, so the tags
(``method``, ``task``, ``shots``, ``seed``, ``encoder``) are set afterwards with ``MlflowClient.set_tag``
on the newest run of that name.

Few-shot splits (``data_lists/multiorgan_ct.json``): a 1-shot cell uses ``training_1shot_seed<seed>``.
Only two training volumes exist, so every 2-shot split is the same set of both volumes and the datalist
has ``training_2shot_seed0`` only: for ``shots=2`` the seed changes the training randomness (the bundle's
``seed``: initialisation of the non-pretrained layers, crops, order), not the split.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from monai.bundle import run

from ..bundle import bundle_root
from .heldout import DATALIST, SEGMENTATION_BUNDLE, finetune_and_evaluate

__all__ = ["CELL_FIELDS", "ORGANS", "cell_name", "datalist_key", "pretrain_ssl", "run_cell", "sqlite_uri"]

#: organs reported beside the mean Dice (the largest abdominal organs of the class list).
ORGANS = ("liver", "spleen", "stomach")
#: the fields of the row :func:`run_cell` returns, keyed by ``cell``.
CELL_FIELDS = (
    "cell",
    "method",
    "task",
    "shots",
    "seed",
    "seconds",
    "mean_dice",
    *ORGANS,
    "run_id",
    "encoder",
)


def pretrain_ssl(
    method: str,
    out: Path,
    feature_size: int,
    pixdim: float,
    epochs: int,
    epoch_length: int,
    learning_rate: float,
) -> Path:
    """Run ``<method>_ssl_pretrain`` at a CPU-sized configuration (64³ global and 32³ local views, batch 2,
    one learning rate for every method: the papers' batch-scaled rules give ~1e-6 at batch 2); returns
    its encoder file."""
    out = Path(out)
    configs = Path(bundle_root(f"{method}_ssl_pretrain")) / "configs"
    run(
        "training",
        config_file=str(configs / "train.json"),
        ckpt_dir=str(out / "models"),
        output_dir=str(out / "eval"),
        feature_size=feature_size,
        pixdim=pixdim,
        global_size=64,
        local_size=32,
        batch_size=2,
        learning_rate=learning_rate,
        num_workers=0,
        max_epochs=epochs,
        epoch_length=epoch_length,
        warmup_epochs=1,
        save_interval=epochs,
    )
    return out / "models" / "encoder.pt"


def sqlite_uri(path: str | os.PathLike) -> str:
    """The MLflow tracking URI of a SQLite store at ``path`` (as MONAI writes it)."""
    from monai.utils import path_to_sqlite_uri

    return path_to_sqlite_uri(str(Path(path).absolute()))


def cell_name(method: str, shots: int, seed: int) -> str:
    """The cell's key in the results table and its MLflow run name."""
    return f"{method}_{shots}shot_seed{seed}"


def datalist_key(shots: int, seed: int, datalist: Path = DATALIST) -> str:
    """``training_<shots>shot_seed<seed>`` for 1 shot; ``..._seed0`` for more (see the module docstring)."""
    key = f"training_{shots}shot_seed{seed if shots == 1 else 0}"
    keys = json.loads(Path(datalist).read_text())
    if key not in keys:
        raise KeyError(
            f"{datalist} has no few-shot key {key!r} (few-shot keys: "
            f"{sorted(k for k in keys if 'shot' in k)}); add it with common.data.add_fewshot_keys"
        )
    return key


def _tag_run(tracking_uri: str, task: str, run_name: str, tags: dict) -> str:
    """Set ``tags`` on the newest run named ``run_name`` in experiment ``task``; return its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(task)
    if experiment is None:
        raise RuntimeError(f"no MLflow experiment {task!r} in {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise RuntimeError(f"no MLflow run {run_name!r} in experiment {task!r} of {tracking_uri}")
    run_id = runs[0].info.run_id
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    return run_id


def run_cell(
    method: str,
    encoder: str | os.PathLike | None,
    shots: int,
    seed: int,
    work_dir: str | os.PathLike,
    tracking_uri: str,
    finetune_epochs: int,
    feature_size: int,
    pixdim: float,
    learning_rate: float,
    roi_size: tuple[int, int, int] | list[int] = (64, 64, 32),
    num_samples: int = 2,
) -> dict:
    """Fine-tune ``multiorgan_ct_segmentation`` (SwinUNETR) from ``encoder`` (``None``: from scratch) on
    the ``shots``-shot split for ``seed``, score the held-out subject, and return the results row
    (:data:`CELL_FIELDS`). Checkpoints and the prediction go under ``<work_dir>/<cell>/``; the training
    curves go to ``tracking_uri`` (experiment ``multiorgan_ct_segmentation``, run ``<cell>``, tagged
    ``method``/``task``/``shots``/``seed``/``encoder``)."""
    task = SEGMENTATION_BUNDLE
    name = cell_name(method, shots, seed)
    out = Path(work_dir) / name
    overrides = {
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "eval"),
        "arch": "swinunetr",
        "feature_size": feature_size,
        "pixdim": [float(pixdim)] * 3,
        "roi_size": [int(r) for r in roi_size],
        "num_samples": num_samples,
        "num_workers": 0,
        "learning_rate": learning_rate,
        "max_epochs": finetune_epochs,
        "val_interval": max(1, finetune_epochs // 2),  # two points of the validation curve
        "train_datalist_key": datalist_key(shots, seed),
        "pretrained_encoder": str(encoder) if encoder else None,
        "seed": seed,
        "tracking_uri": tracking_uri,
        "experiment_name": task,
        "run_name": name,
    }
    start = time.time()
    result = finetune_and_evaluate(overrides, tracking="mlflow")
    seconds = time.time() - start
    encoder_text = str(encoder) if encoder else ""
    run_id = _tag_run(
        tracking_uri,
        task,
        name,
        {"method": method, "task": task, "shots": shots, "seed": seed, "encoder": encoder_text},
    )
    return {
        "cell": name,
        "method": method,
        "task": task,
        "shots": shots,
        "seed": seed,
        "seconds": round(seconds, 1),
        "mean_dice": round(result.mean_dice, 4),
        **{organ: round(result.dice_of(organ), 4) for organ in ORGANS},
        "run_id": run_id,
        "encoder": encoder_text,
    }
