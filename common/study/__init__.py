"""Studies: every comparison of the collection is a declarative study file (``tools/studies/*.json``)
expanded into content-hashed cells, each run once through ``monai.bundle`` by one resumable runner, logged
to one MLflow store and summarised by one report: study file -> cells -> bundles -> MLflow -> report.

    python -m common.study run tools/studies/benchmark_small.json [--only simmim] [--dry_run] [--jobs 2]
    python -m common.study report tools/studies/benchmark_small.json
"""

from .report import build_report
from .runner import run_study
from .spec import load_study

__all__ = ["build_report", "load_study", "run_study"]
