"""The Markdown report of a study, from its ``results.json`` and MLflow store alone.

:func:`build_report` writes ``<work_dir>/report/report.md`` (and its figures): a provenance section (the
study file and its sha256, the git commit of the run and of the report, cell counts) and then the
sections the study file's ``report.sections`` lists, each ``{"kind": ..., "task": ...}``:

- ``results``: ``metric`` per (label, shots): mean ± sd over seeds, bootstrap CI, Δ to ``baseline``,
  paired Wilcoxon and t-test (:func:`~common.evaluation.report.results_table`; failed cells are counted,
  pending ones left out); ``label`` lists the axes that name a row (default ``["encoder"]``);
- ``per_class``: mean ± sd of each of ``metrics`` (:func:`~common.evaluation.benchmark_report.organ_table`);
- ``table``: one row per cell with its ``metrics`` (every metric without it), status and error;
- ``curves``: the ``metrics`` (default ``train_loss``, ``val_mean_dice``) of the tracked runs from MLflow
  (:func:`~common.evaluation.curves.convergence_curves`);
- ``encoders``: CKA, organ embeddings + retrieval, patch PCA, lesion classification and the cross-task
  rank plot of the task's Swin encoders (:func:`~common.evaluation.benchmark_report.encoder_sections`,
  with ``feature_size`` and ``pixdim``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.fetch import sha256sum
from .runner import RESULTS_FILE, git_commit
from .spec import load_study

__all__ = ["build_report", "result_rows"]

SECTION_KEYS = {
    "results": ("kind", "title", "task", "metric", "baseline", "label"),
    "per_class": ("kind", "title", "task", "metrics", "label"),
    "table": ("kind", "title", "task", "metrics"),
    "curves": ("kind", "title", "task", "label", "metrics"),
    "encoders": ("kind", "title", "task", "feature_size", "pixdim"),
}


def result_rows(record: Mapping, task: str | None = None, label: Sequence[str] = ("encoder",)) -> list[dict]:
    """One flat row per cell of ``record`` (``results.json``), of ``task`` when given: axes, status,
    metrics, ``method`` (the ``label`` axes joined by ``/``), ``shots`` ("—" without a shots axis) and
    ``seed`` (0 without a seed axis), as :func:`~common.evaluation.report.results_rows` reads them."""
    rows = []
    for cell_id, cell in record["cells"].items():
        if task and cell.get("task") != task:
            continue
        row = {k: v for k, v in cell.items() if k != "metrics"}
        row.update(cell.get("metrics") or {})
        row["id"] = cell_id
        row["method"] = "/".join(str(cell.get(k, "")) for k in label)
        row["shots"] = cell.get("shots", "—")
        row["seed"] = cell.get("seed", 0)
        rows.append(row)
    return rows


def _table(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
    from ..evaluation.report import _fmt

    lines = ["| " + " | ".join(["cell", "status", *metrics, "note"]) + " |"]
    lines.append("|---|---|" + "---:|" * len(metrics) + "---|")
    for r in rows:
        values = [_fmt(r[m]) if isinstance(r.get(m), int | float) else "—" for m in metrics]
        note = " ".join(str(r.get("error", "")).split()).replace("|", "\\|")  # one table line
        lines.append("| " + " | ".join([r["name"], r["status"], *values, note]) + " |")
    return "\n".join(lines) + "\n"


def _curves(work_dir: Path, rows: Sequence[Mapping], out: Path, name: str, metrics: Sequence[str]) -> str:
    from ..evaluation.curves import convergence_curves, read_metric_histories
    from ..evaluation.report import figure_link

    methods = {r["run_id"]: f"{r['method']}, {r['shots']}-shot" for r in rows if r.get("run_id")}
    runs = [
        run
        for run in read_metric_histories(work_dir / "mlruns.db", metrics=metrics)
        if run["run_id"] in methods
    ]
    runs = [run for run in runs if any(run["histories"].values())]
    if not runs:
        return "No tracked run with curves in this study's MLflow store."
    figure = convergence_curves(
        runs, lambda run: methods[run["run_id"]], out / f"{name}.png", metrics, smooth={"train_loss": 3}
    )
    return f"![convergence curves]({figure_link(figure, out)})\n"


def build_report(path: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of the study file ``path`` (see the module docstring); returns its path."""
    from ..evaluation.benchmark_report import encoder_sections, organ_table
    from ..evaluation.report import results_table, write_report

    study = load_study(path, work_dir)
    results = study.work_dir / RESULTS_FILE
    if not results.is_file():
        raise FileNotFoundError(f"{results} not found: run `python -m common.study run {path}` first")
    record = json.loads(results.read_text())
    out = study.work_dir / "report"
    states = [c["status"] for c in record["cells"].values()]
    provenance = [
        f"- study file: `{record['study']}` (sha256 {record['study_sha256'][:12]}; now "
        f"{sha256sum(study.path)[:12]})",
        f"- cells run at git commit `{record['git_commit']}`; report written at `{git_commit()}`",
        f"- {len(states)} cells: {states.count('done')} done, {states.count('failed')} failed, "
        f"{states.count('pending')} pending; MLflow store `{study.work_dir / 'mlruns.db'}`",
    ]
    if study.config.get("description"):
        provenance.insert(0, study.config["description"])
    sections = [("Study", "\n".join(provenance))]
    for i, section in enumerate(study.config.get("report", {}).get("sections", [])):
        kind = section.get("kind")
        if kind not in SECTION_KEYS or set(section) - set(SECTION_KEYS[kind]):
            raise ValueError(f"{study.path}: report#sections#{i}: kind {kind!r} with keys {sorted(section)}")
        label = section.get("label", ["encoder"])
        rows = result_rows(record, section.get("task"), label)
        done = [r for r in rows if r["status"] == "done"]
        title = section.get("title", f"{kind}: {section.get('task', 'all tasks')}")
        if kind == "results":
            metric = section.get("metric", "mean_dice")
            finished = [r for r in rows if r["status"] != "pending"]  # a failed cell counts as failed
            body = results_table(finished, metric, baseline=section.get("baseline", "scratch"))
        elif kind == "per_class":
            body = organ_table(done, section["metrics"])
        elif kind == "table":
            keys = sorted({k for r in rows for k in (record["cells"][r["id"]].get("metrics") or {})})
            body = _table(rows, section.get("metrics") or keys)
        elif kind == "curves":
            metrics = section.get("metrics", ["train_loss", "val_mean_dice"])
            body = _curves(study.work_dir, done, out, f"curves_{i}", metrics)
        else:
            sections.append((title, "Encoder analyses of the fine-tuned cells below."))
            sections += encoder_sections(done, out, section["feature_size"], section["pixdim"])
            continue
        sections.append((title, body))
    report = write_report(out / "report.md", sections, {}, title=f"Study report: {study.path.stem}")
    print(report)
    return report
