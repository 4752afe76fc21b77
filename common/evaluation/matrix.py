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

Published checkpoints (``common.networks.published.PUBLISHED``) enter the matrix by name and file:
:func:`published_encoder` converts one once into ``<work_dir>/published/<name>/encoder.pt`` (the collection's
encoder file, :func:`~common.networks.published.export_published_encoder`), reuses it when the published
name, file hash and configuration are the same and refuses it when they differ.

Few-shot splits (``data_lists/multiorgan_ct.json``): a 1-shot cell uses ``training_1shot_seed<seed>``.
Only two training volumes exist, so every 2-shot split is the same set of both volumes and the datalist
has ``training_2shot_seed0`` only: for ``shots=2`` the seed changes the training randomness (the bundle's
``seed``: initialisation of the non-pretrained layers, crops, order), not the split.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from monai.bundle import run

from ..bundle import bundle_root
from ..data.fetch import sha256sum
from ..networks.pretrained import read_encoder_file
from ..networks.published import export_published_encoder, published_entry
from .heldout import DATALIST, SEGMENTATION_BUNDLE, finetune_and_evaluate

__all__ = [
    "CELL_FIELDS",
    "ORGANS",
    "PUBLISHED_SPEC_KEYS",
    "cell_name",
    "datalist_key",
    "pretrain_ssl",
    "published_encoder",
    "run_cell",
    "sqlite_uri",
]

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


#: the keys of a published encoder's spec: ``published`` (a name of ``PUBLISHED``), ``file``, and optional
#: ``config`` (overrides of the entry's constructor arguments, e.g. ``{"feature_size": 12}``).
PUBLISHED_SPEC_KEYS = ("published", "file", "config")


def published_encoder(name: str, spec: Mapping, work_dir: str | os.PathLike, feature_size: int) -> tuple:
    """Convert the published Swin checkpoint of ``spec`` (:data:`PUBLISHED_SPEC_KEYS`) for the encoder
    ``name`` into ``<work_dir>/published/<name>/encoder.pt``, once; returns ``(encoder file, record)`` with
    the record ``{"published", "published_file", "published_sha256", "config"}`` (settings and MLflow tags).
    The matrix fine-tunes a SwinUNETR of ``feature_size``: the entry's configuration updated by ``config``
    must have it (a published SwinUNETR has 48), and a file that does not fit raises the loader's error."""
    where = f"encoder {name!r} ({dict(spec)})"
    if set(spec) - set(PUBLISHED_SPEC_KEYS) or not {"published", "file"} <= set(spec):
        raise ValueError(f"{where}: a published encoder has the keys {PUBLISHED_SPEC_KEYS}, config optional")
    entry = published_entry(spec["published"])
    config = {**entry.config, **spec.get("config", {})}
    if entry.encoder != "swin" or config.get("feature_size") != feature_size:
        raise ValueError(
            f"{where}: the matrix fine-tunes a SwinUNETR of feature_size {feature_size}; "
            f"{spec['published']!r} builds {entry.encoder!r} with {config} (set 'config': "
            f"{{'feature_size': {feature_size}}} for a file of that size)"
        )
    file = Path(spec["file"])
    if not file.is_file():
        raise FileNotFoundError(f"{where}: no file {file}")
    record = {
        "published": spec["published"],
        "published_file": str(file),
        "published_sha256": sha256sum(file),
        "config": dict(spec.get("config", {})),
    }
    out = Path(work_dir) / "published" / name / "encoder.pt"
    if out.is_file():
        _, meta = read_encoder_file(out)
        old = {k: meta.get(k) for k in ("published", "published_sha256", "encoder_config")}
        new = {"published": record["published"], "published_sha256": record["published_sha256"]}
        if old != {**new, "encoder_config": config}:
            raise ValueError(
                f"{out}: encoder {name!r} was converted from {old}, not {new} with {config}; "
                "use a new --work_dir or the same file to resume"
            )
        return out, record
    return export_published_encoder(spec["published"], file, out, **spec.get("config", {})), record


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
    tags: Mapping | None = None,
) -> dict:
    """Fine-tune ``multiorgan_ct_segmentation`` (SwinUNETR) from ``encoder`` (``None``: from scratch) on
    the ``shots``-shot split for ``seed``, score the held-out subject, and return the results row
    (:data:`CELL_FIELDS`). Checkpoints and the prediction go under ``<work_dir>/<cell>/``; the training
    curves go to ``tracking_uri`` (experiment ``multiorgan_ct_segmentation``, run ``<cell>``, tagged
    ``method``/``task``/``shots``/``seed``/``encoder`` and ``tags``)."""
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
        {
            "method": method,
            "task": task,
            "shots": shots,
            "seed": seed,
            "encoder": encoder_text,
            **(tags or {}),
        },
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
