"""``python -m common.study run|report|cells STUDY_FILE ...`` (see :mod:`common.study`)."""

from __future__ import annotations

import fire

from .report import build_report
from .runner import run_study


def run(
    study: str,
    only: list[str] | tuple[str, ...] | str | None = None,
    dry_run: bool = False,
    jobs: int = 1,
    work_dir: str | None = None,
    report: bool = False,
) -> None:
    """Run (or resume) every unfinished cell of ``study`` (``--only``: cells whose id contains one of
    these; ``--dry_run``: print the cell list; ``--jobs N``: N cells at a time; ``--report``: write the
    report afterwards)."""
    run_study(study, only, dry_run, jobs, work_dir)
    if report and not dry_run:
        build_report(study, work_dir)


def report(study: str, work_dir: str | None = None) -> None:
    """Write ``<work_dir>/report/report.md`` from the study's results and MLflow store."""
    build_report(study, work_dir)


def main() -> None:
    fire.Fire({"run": run, "report": report})


if __name__ == "__main__":
    main()
