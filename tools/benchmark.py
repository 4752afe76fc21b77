"""Pre-training benchmark matrix: every encoder × few-shot setting × seed on the segmentation task.

Encoders: ``scratch`` (always), one per pre-training bundle named in ``methods`` (``<method>_ssl_pretrain``,
pre-trained here at a CPU-sized configuration into ``<work_dir>/pretrain/<method>/models/encoder.pt``) and
one per entry of ``encoders``: ``{name: path}`` for a ready encoder file, or ``{name: {"published": NAME,
"file": PATH, "config": {...}}}`` for a published checkpoint (``common.networks.published.PUBLISHED``: its
file in the published layout, converted once into ``<work_dir>/published/<name>/encoder.pt``; ``config``
overrides the entry's sizes, e.g. ``{"feature_size": 12}`` for the small matrix: a published SwinUNETR has
48; :func:`common.evaluation.matrix.published_encoder`). Each is fine-tuned on the one task for now,
``multiorgan_ct_segmentation`` (SwinUNETR), for every ``shots`` and ``seed``, and scored on the held-out
subject (:func:`common.evaluation.matrix.run_cell`). A 2-shot split is both training volumes for every
seed (only two exist): there the seed changes the training randomness, not the split.

Outputs under ``work_dir``: ``results.csv`` (one row per cell, written as each cell finishes),
``results.md`` (the table), ``mlruns.db`` (the MLflow store shared by all cells: experiment = task, run
name = ``<method>_<shots>shot_seed<seed>``, tags ``method``/``task``/``shots``/``seed``/``encoder``, and
``published``/``published_file``/``published_sha256``/``config`` for a published checkpoint) and
one folder per cell. Resumable: a cell already in the CSV is skipped, and an encoder already on disk is
not pre-trained again (nor is one whose cells are all done).

Then :func:`common.evaluation.benchmark_report.build_report` writes ``<work_dir>/report/report.md`` with
its figures (``--report False`` skips it; ``tools/report.py`` writes it for any matrix folder). The sizes
are kept in ``settings.json``: resuming with other sizes is refused, and so is resuming with another file
(sha256) for a published encoder.

Defaults: the small matrix -- SimMIM and the SwinUNETR SSL recipe (each pre-trained 2 epochs of 10
iterations) plus scratch, 1 and 2 shots, seeds 0-2; SwinUNETR feature size 12 at 4 mm, 64x64x32 crops,
4 fine-tuning epochs (validation after epochs 2 and 4). A pipeline check of the whole method, not a
converged comparison. ``make benchmark`` runs it (see the README for the measured time).

    python tools/benchmark.py
    python tools/benchmark.py --methods "['simmim','rotation']" --shots "[1,2]" --seeds "[0,1,2]"
    python tools/benchmark.py --encoders "{'suprem': 'runs/suprem/encoder.pt'}" --work_dir runs/bench
    python tools/benchmark.py --methods "[]" --work_dir runs/bench_published --encoders "{'monai_ssl':
        {'published': 'swinunetr_ssl', 'file': 'model_swinvit.pt', 'config': {'feature_size': 48}}}" \
        --feature_size 48
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import fire

from common.data.prepare import prepare_all
from common.evaluation.benchmark_report import build_report, write_settings
from common.evaluation.heldout import SEGMENTATION_BUNDLE
from common.evaluation.matrix import (
    CELL_FIELDS,
    cell_name,
    pretrain_ssl,
    published_encoder,
    run_cell,
    sqlite_uri,
)
from common.evaluation.results import ResultsTable


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    return list(value)


def main(
    methods: list[str] | tuple[str, ...] = ("simmim", "swinunetr"),
    encoders: dict[str, str | dict] | None = None,
    shots: list[int] | tuple[int, ...] = (1, 2),
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    work_dir: str = "runs/benchmark",
    feature_size: int = 12,
    pixdim: float = 4.0,
    roi_size: list[int] | tuple[int, ...] = (64, 64, 32),
    num_samples: int = 2,
    finetune_epochs: int = 4,
    learning_rate: float = 1e-3,
    pretrain_epochs: int = 2,
    pretrain_epoch_length: int = 10,
    pretrain_learning_rate: float = 5e-4,
    report: bool = True,
) -> None:
    """Run (or resume) the matrix, then write its report (``report=False`` skips it; ``tools/report.py``
    writes it later); see the module docstring."""
    methods, shots, seeds = (
        _as_list(methods),
        [int(s) for s in _as_list(shots)],
        [int(s) for s in _as_list(seeds)],
    )
    encoders = dict(encoders or {})
    names = ["scratch", *methods, *encoders]
    if len(set(names)) != len(names):
        raise ValueError(f"encoder names must be unique (scratch is reserved): {names}")
    for name, path in encoders.items():
        if not isinstance(path, Mapping) and not Path(path).is_file():
            raise FileNotFoundError(f"encoder {name!r}: no file {path}")
    root = Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    encoder_files: dict[str, Path | None] = {"scratch": None}
    published: dict[str, dict] = {}  # name -> record (settings, MLflow tags)
    for name, spec in encoders.items():
        if isinstance(spec, Mapping):
            encoder_files[name], published[name] = published_encoder(name, spec, root, feature_size)
        else:
            encoder_files[name] = Path(spec)
    prepare_all()
    write_settings(
        root,
        {
            "feature_size": feature_size,
            "pixdim": pixdim,
            "roi_size": [int(r) for r in roi_size],
            "num_samples": num_samples,
            "finetune_epochs": finetune_epochs,
            "learning_rate": learning_rate,
            "pretrain_epochs": pretrain_epochs,
            "pretrain_epoch_length": pretrain_epoch_length,
            "pretrain_learning_rate": pretrain_learning_rate,
            "methods": methods,
            "encoders": {k: published.get(k, str(v)) for k, v in encoders.items()},
            "shots": shots,
            "seeds": seeds,
        },
    )
    results = ResultsTable(root / "results.csv", CELL_FIELDS)
    uri = sqlite_uri(root / "mlruns.db")
    cells = [(name, n, seed) for name in names for n in shots for seed in seeds]
    total = len(cells)
    for k, (name, n, seed) in enumerate(cells, 1):
        cell = cell_name(name, n, seed)
        if cell in results:
            print(f"[benchmark] cell {k}/{total} {cell}: already in {results.path}, skipped", flush=True)
            continue
        if name not in encoder_files:  # a pre-training method, first needed now
            encoder = root / "pretrain" / name / "models" / "encoder.pt"
            if encoder.is_file():
                print(f"[benchmark] pretrain {name}: {encoder} exists, reused", flush=True)
            else:
                print(f"[benchmark] pretrain {name} ...", flush=True)
                start = time.time()
                encoder = pretrain_ssl(
                    name,
                    root / "pretrain" / name,
                    feature_size,
                    pixdim,
                    pretrain_epochs,
                    pretrain_epoch_length,
                    pretrain_learning_rate,
                )
                print(f"[benchmark] pretrain {name}: {encoder} in {time.time() - start:.0f} s", flush=True)
            encoder_files[name] = encoder
        print(f"[benchmark] cell {k}/{total} {cell} ...", flush=True)
        row = run_cell(
            name,
            encoder_files[name],
            n,
            seed,
            root / "cells",
            uri,
            finetune_epochs,
            feature_size,
            pixdim,
            learning_rate,
            roi_size=roi_size,
            num_samples=num_samples,
            tags=published.get(name),
        )
        results.append(row)
        print(
            f"[benchmark] cell {k}/{total} {cell}: mean Dice {row['mean_dice']} in {row['seconds']} s",
            flush=True,
        )
    table = results.markdown()
    (root / "results.md").write_text(
        f"# Benchmark: {SEGMENTATION_BUNDLE}, held-out mean Dice per cell\n\n{table}\n"
    )
    print("\n" + table)
    if report:
        build_report(root)


if __name__ == "__main__":
    fire.Fire(main)
