"""The Markdown report of a benchmark matrix folder written by ``tools/benchmark.py``.

Reads ``<work_dir>/settings.json``, ``results.csv``, ``mlruns.db``, the fine-tuned checkpoints and the
encoder files, and writes ``<work_dir>/report/report.md`` with its figures
(:func:`common.evaluation.benchmark_report.build_report`: results table with statistics, per-organ Dice,
convergence curves, CKA, organ embeddings and retrieval, patch PCA, lesion classification, cross-task ranks).

    python tools/report.py --work_dir runs/benchmark
"""

from __future__ import annotations

import fire

from common.evaluation.benchmark_report import build_report


def main(
    work_dir: str = "runs/benchmark",
    baseline: str = "scratch",
    seed: int = 0,
    patches_per_organ: int = 6,
    lesion_patches_per_class: int = 8,
    cka_crops: int = 4,
    k: int = 5,
) -> None:
    """Write the report of the matrix in ``work_dir`` and print its path."""
    path = build_report(work_dir, baseline, seed, patches_per_organ, lesion_patches_per_class, cka_crops, k)
    print(path)


if __name__ == "__main__":
    fire.Fire(main)
