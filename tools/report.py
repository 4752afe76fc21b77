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

if __name__ == "__main__":
    fire.Fire(build_report)  # prints the report's path
