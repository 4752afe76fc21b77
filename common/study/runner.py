"""Run a study's matrix: every unfinished cell (and the steps it needs) once, in child processes.

:func:`run_study` expands the study file (:func:`~common.study.spec.load_study`), skips every item whose
``<out>/result.json`` says done (a finished cell is never rerun; a changed setting is a new id, so a new
cell), converts published checkpoints once, and starts ``python -m common.study.execute`` per item, up to
``jobs`` at a time, a step before the items that need it, each with its log in ``<out>/log.txt``. A failed
item is recorded with its error and the others still run (items needing a failed step are recorded as
failed too). ``<work_dir>/results.json`` (written atomically after every item) holds every cell's axes,
status, metrics or error, MLflow run id and folder, with the study file, its sha256 and the git commit;
``<work_dir>/mlruns.db`` is the one MLflow store of the study. Progress over the whole matrix (done,
failed, ETA) goes through tqdm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..bundle import REPO_ROOT
from ..data.datalists import write_json
from ..data.fetch import sha256sum
from ..evaluation.matrix import published_encoder, sqlite_uri
from .execute import RESULT_FILE, read_result
from .spec import Item, Study, load_study

__all__ = ["RESULTS_FILE", "collect_results", "git_commit", "run_study", "select"]

RESULTS_FILE = "results.json"


def git_commit() -> str:
    """The repository's HEAD commit (``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def select(study: Study, only: Sequence[str] | str | None) -> list[Item]:
    """The cells whose name or id contains one of ``only`` (all without it), with the steps they need."""
    if isinstance(only, str):
        only = [only]
    cells = [c for c in study.cells if not only or any(o in c.id for o in only)]
    if only and not cells:
        raise ValueError(f"{study.path}: no cell matches --only {list(only)}")
    steps = {s.id: s for s in study.steps.values()}
    needed: set[str] = set()
    todo = [d for c in cells for d in c.deps]
    while todo:
        dep = todo.pop()
        if dep not in needed:
            needed.add(dep)
            todo += steps[dep].deps
    return [s for s in study.steps.values() if s.id in needed] + cells


def collect_results(study: Study, commit: str | None = None) -> dict:
    """Every cell of ``study`` with its result so far; written to ``<work_dir>/results.json``."""
    cells = {}
    for cell in study.cells:
        result = read_result(cell.spec["out"]) or {"status": "pending"}
        cells[cell.id] = {"name": cell.name, **cell.axes, "out": cell.spec["out"], **result}
        cells[cell.id]["encoder_file"] = cell.spec.get("encoder_file")
    record = {
        "study": str(study.path),
        "study_sha256": sha256sum(study.path),
        "git_commit": commit or git_commit(),
        "cells": cells,
    }
    write_json(record, study.work_dir / RESULTS_FILE, default=str)
    return record


def _convert_published(study: Study, items: Sequence[Item]) -> None:
    for item in items:
        published, file = item.spec.get("published"), item.spec.get("encoder_file")
        if published and not Path(file).is_file():
            feature_size = item.spec["overrides"].get("feature_size")
            name = Path(file).parent.name
            published_encoder(name, published, Path(file).parent.parent.parent, feature_size)


def _record_failure(item: Item, error: str) -> str:
    """Write ``{"status": "failed", "error"}`` as ``item``'s result; returns ``error``."""
    write_json({"status": "failed", "error": error}, Path(item.spec["out"]) / RESULT_FILE)
    return error


def _experiment(study: Study, item: Item) -> str:
    return f"{study.path.stem}.{item.axes.get('task', 'steps')}"


def _prepare_store(study: Study, items: Sequence[Item], uri: str) -> None:
    """Create the MLflow store and the experiments of ``items`` here, once: cells started in parallel
    would otherwise race to migrate a new SQLite store and to create the same experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for name in sorted({_experiment(study, item) for item in items if item.kind == "cell"}):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)


def _start(study: Study, item: Item, uri: str) -> subprocess.Popen:
    out = Path(item.spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    spec = {**item.spec, "kind": item.kind, "tracking_uri": uri, "study": study.path.stem}
    spec["experiment"] = _experiment(study, item)
    write_json(spec, out / "spec.json", default=str)
    log = open(out / "log.txt", "w")  # noqa: SIM115 -- closed when the process ends
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "common.study.execute", str(out / "spec.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=env,
    )
    process.log = log
    return process


def run_study(
    path: str | os.PathLike,
    only: Sequence[str] | str | None = None,
    dry_run: bool = False,
    jobs: int = 1,
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """Run (or resume) the study file ``path``; see the module docstring. ``dry_run`` prints the cell
    list (id, state) and runs nothing. Returns the results record."""
    study = load_study(path, work_dir)
    items = select(study, only)
    state = {i.id: (read_result(i.spec["out"]) or {}).get("status", "pending") for i in items}
    if dry_run:
        for item in items:
            print(f"{item.kind:4s} {item.id}  [{state[item.id]}]")
        print(f"{len(items)} items in {study.work_dir}: {sum(s != 'done' for s in state.values())} to run")
        return {"cells": {i.id: state[i.id] for i in items}}
    study.work_dir.mkdir(parents=True, exist_ok=True)
    if not (study.work_dir / RESULTS_FILE).is_file():
        collect_results(study)
    uri = sqlite_uri(study.work_dir / "mlruns.db")
    pending = [i for i in items if state[i.id] != "done"]
    print(
        f"[study] {study.path}: {len(items)} items, {len(items) - len(pending)} done, {len(pending)} to run"
    )
    _convert_published(study, pending)
    _prepare_store(study, pending, uri)
    done = {i.id for i in items if state[i.id] == "done"}
    failed: dict[str, str] = {}
    running: dict[str, tuple[Item, subprocess.Popen]] = {}
    bar = tqdm(total=len(items), initial=len(done), desc=study.path.stem, unit="item", file=sys.stdout)
    while pending or running:
        for item in list(pending):
            blocked = [d for d in item.deps if d in failed]
            if blocked:
                pending.remove(item)
                failed[item.id] = _record_failure(item, f"dependency {blocked[0]} failed")
                bar.update(1)
            elif len(running) < jobs and all(d in done for d in item.deps):
                pending.remove(item)
                running[item.id] = (item, _start(study, item, uri))
        for item_id, (item, process) in list(running.items()):
            if process.poll() is None:
                continue
            process.log.close()
            del running[item_id]
            result = read_result(item.spec["out"]) or {}
            if result.get("status") == "done":
                done.add(item_id)
            else:
                failed[item_id] = _record_failure(
                    item, result.get("error") or f"exit code {process.returncode}"
                )
                tqdm.write(f"[study] {item.id} FAILED: {failed[item_id]} (log: {item.spec['out']}/log.txt)")
            bar.update(1)
            bar.set_postfix(failed=len(failed))
            collect_results(study)
        time.sleep(0.2)
    bar.close()
    record = collect_results(study)
    print(f"[study] {len(done)} done, {len(failed)} failed; results: {study.work_dir / RESULTS_FILE}")
    return record
