"""Training curves read back from MLflow, convergence plots, and cross-task encoder rankings.

Reading (:func:`read_metric_histories`). Bundles run with ``--tracking mlflow`` log through MONAI's
``MLFlowHandler`` (``monai/handlers/mlflow_handler.py``, MONAI 1.6.1), whose behaviour fixes what is stored:

* tracking URI: ``sqlite:///<output_dir>/mlruns.db`` in this collection's configs (the handler itself
  falls back to ``sqlite:///<cwd>/mlruns.db`` when given none; plain-folder file stores are refused);
  experiment: the handler's ``experiment_name`` (default ``"monai_experiment"``, here the config's
  ``experiment_name``); run name: ``run_name`` or ``run_<YYYYmmdd_HHMMSS>``.
* per-iteration metrics (``Events.ITERATION_COMPLETED``): the scalar ``output_transform(engine.state.output)``
  under ``tag_name`` -- MONAI's default tag is ``"Loss"``, this collection's trainers set
  ``tag_name="train_loss"`` -- plus the optimiser's learning rate as ``"lr_group_<i>"``
  (``optimizer_param_names="lr"``), all at ``step = engine.state.iteration`` (the trainer's global iteration).
* per-epoch metrics (``Events.EPOCH_COMPLETED``): every entry of ``engine.state.metrics`` under its own
  name at ``step = engine.state.epoch`` -- the trainer's key metric (``train_mean_dice``) and, from the
  validator, the key validation metric (``val_mean_dice``). ``ValidationHandler`` runs the evaluator with
  the trainer's epoch, so validation values sit at the *trainer epoch* (every ``val_interval`` epochs).
* parameters: ``max_epochs`` and ``epoch_length`` (``default_tracking_params``) and any ``experiment_param``.

So ``train_loss`` is indexed by iteration and ``val_mean_dice`` by epoch: the two curves have different x
units, which :func:`convergence_curves` labels per subplot.

Plots are drawn with ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` (no pyplot state) and written
atomically (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .figures import new_figure, save_figure

__all__ = [
    "DEFAULT_METRICS",
    "MONAI_DEFAULT_ITERATION_TAG",
    "convergence_curves",
    "convergence_figure",
    "cross_task_rank_figure",
    "cross_task_rank_plot",
    "group_mean_sd",
    "mean_ranks",
    "moving_average",
    "read_metric_histories",
]

#: metrics this collection's bundles log: training loss per iteration, validation mean Dice per epoch.
DEFAULT_METRICS = ("train_loss", "val_mean_dice")
#: the key MONAI's ``MLFlowHandler`` uses for the per-iteration scalar when ``tag_name`` is not given.
MONAI_DEFAULT_ITERATION_TAG = "Loss"

#: x-axis label per metric name (as MONAI's ``MLFlowHandler`` logs them); other metrics get "step".
_X_LABELS = {
    "train_loss": "iteration",
    MONAI_DEFAULT_ITERATION_TAG: "iteration",
    "lr_group_0": "iteration",
    "train_mean_dice": "epoch",
    "val_mean_dice": "epoch",
}

History = list[tuple[int, float]]
GroupBy = str | Sequence[str] | Callable[[Mapping[str, Any]], Any]


# --------------------------------------------------------------------------------------------- reading
def _normalise_uri(tracking_uri: str | os.PathLike) -> str:
    """A path to an existing file becomes a SQLite URI (as ``monai.utils.path_to_sqlite_uri`` writes it)."""
    text = os.fspath(tracking_uri)
    if "://" not in text and Path(text).is_file():
        from monai.utils import path_to_sqlite_uri

        return path_to_sqlite_uri(text)
    return text


def _check_store(uri: str) -> None:
    """Refuse a store that is missing or not an MLflow database *before* MLflow opens it.

    ``MlflowClient`` would silently create an empty database (or tables inside any SQLite file) for a
    wrong path, which would then read as "no experiments"; this opens SQLite files read-only first.
    """
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if not database or database == ":memory:":
            raise ValueError(f"MLflow tracking URI {uri!r} names no database file")
        path = Path(database)
        if not path.is_file():
            raise FileNotFoundError(f"MLflow tracking store not found: {uri!r} (no file {path})")
        try:
            con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
            try:
                tables = {row[0] for row in con.execute("select name from sqlite_master where type='table'")}
            finally:
                con.close()
        except sqlite3.Error as err:
            raise ValueError(
                f"MLflow tracking store {uri!r} is not a readable SQLite database: {err}"
            ) from err
        if not {"experiments", "runs", "metrics"} <= tables:
            raise ValueError(
                f"MLflow tracking store {uri!r} is not an MLflow database "
                f"(tables: {sorted(tables) or 'none'})"
            )
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
        if not folder.is_dir():
            raise FileNotFoundError(f"MLflow tracking store not found: {uri!r} (no folder {folder})")


def _matches(tags: Mapping[str, str], tags_filter: Mapping[str, Any] | None) -> bool:
    """MLflow tag values are strings: compare ``str(value)``; a list/tuple/set accepts any of its values."""
    for key, wanted in (tags_filter or {}).items():
        if key not in tags:
            return False
        if isinstance(wanted, (list, tuple, set, frozenset)):
            if tags[key] not in {str(w) for w in wanted}:
                return False
        elif tags[key] != str(wanted):
            return False
    return True


def read_metric_histories(
    tracking_uri: str | os.PathLike,
    experiment_names: str | Iterable[str] | None = None,
    metrics: Iterable[str] | None = DEFAULT_METRICS,
    tags_filter: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Read the metric histories of MLflow runs.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///<output_dir>/mlruns.db`` (what the bundles'
            ``MLFlowHandler`` writes); a path to an existing ``.db`` file is turned into that URI.
        experiment_names: experiment name(s) to read; ``None`` reads every active experiment.
        metrics: metric keys to read (see the module docstring for the names MONAI logs: ``train_loss``
            -- or ``"Loss"`` with MONAI's default ``tag_name`` -- per iteration, ``val_mean_dice`` per
            epoch); ``None`` reads every metric each run has.
        tags_filter: keep only runs whose tags match, ``{tag: value}`` compared as strings
            (e.g. ``{"method": "mae", "shots": 5}``); a list/tuple/set value accepts any of its values.

    Returns:
        One dict per active run, ordered by experiment (as named), then start time and run id:
        ``{"run_id", "run_name", "experiment_name", "tags": {...}, "params": {...},
        "histories": {metric: [(step, value), ...]}}``. Every requested metric is a key of
        ``histories``; a metric the run never logged has an empty list. Points are sorted by step (then
        by logging time, so a step logged twice keeps both, the later one last).

    Raises:
        FileNotFoundError: the store (SQLite file or folder) does not exist; the message names the URI.
        ValueError: the file is not an MLflow database, or an experiment name is unknown (the message
            lists the experiments in the store).
        RuntimeError: MLflow fails to open or read the store (the message names the URI).
    """
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    uri = _normalise_uri(tracking_uri)
    _check_store(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    except Exception as err:
        raise RuntimeError(f"cannot read MLflow tracking store {uri!r}: {err}") from err
    by_name = {exp.name: exp for exp in experiments}
    if experiment_names is None:
        chosen = sorted(experiments, key=lambda exp: exp.name)
    else:
        names = [experiment_names] if isinstance(experiment_names, str) else list(experiment_names)
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise ValueError(
                f"unknown MLflow experiment(s) {unknown} in {uri!r}; experiments there: {sorted(by_name)}"
            )
        chosen = [by_name[name] for name in dict.fromkeys(names)]

    results: list[dict] = []
    try:
        for exp in chosen:
            runs, token = [], None
            while True:
                page = client.search_runs(
                    [exp.experiment_id],
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000,
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    break
            runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_id))
            for run in runs:
                tags = dict(run.data.tags)
                if not _matches(tags, tags_filter):
                    continue
                keys = sorted(run.data.metrics) if metrics is None else list(dict.fromkeys(metrics))
                histories = {}
                for key in keys:
                    points = client.get_metric_history(run.info.run_id, key)
                    points = sorted(points, key=lambda m: (m.step, m.timestamp))
                    histories[key] = [(int(m.step), float(m.value)) for m in points]
                results.append(
                    {
                        "run_id": run.info.run_id,
                        "run_name": run.info.run_name,
                        "experiment_name": exp.name,
                        "tags": tags,
                        "params": dict(run.data.params),
                        "histories": histories,
                    }
                )
    except Exception as err:
        raise RuntimeError(f"cannot read runs from MLflow tracking store {uri!r}: {err}") from err
    return results


# --------------------------------------------------------------------------------------------- grouping
def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over consecutive logged points; the window shrinks at both ends.

    ``window`` <= 1 returns the values unchanged. Point ``i`` averages points
    ``i - (window - 1) // 2 .. i + window // 2`` that exist (no lag, no padding), e.g.
    ``moving_average([0, 3, 6, 3], 3) == [1.5, 3, 4, 4.5]``.
    """
    x = np.asarray(values, dtype=float)
    if window <= 1 or x.size == 0:
        return x.copy()
    left, right = (window - 1) // 2, window // 2
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(x.size)
    lo, hi = np.maximum(idx - left, 0), np.minimum(idx + right + 1, x.size)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _group_label(run: Mapping[str, Any], group_by: GroupBy) -> str:
    if callable(group_by):
        return str(group_by(run))
    keys = [group_by] if isinstance(group_by, str) else list(group_by)
    values = []
    for key in keys:
        for source in (run.get("tags", {}), run.get("params", {}), run):
            if key in source and not isinstance(source[key], (dict, list)):
                values.append(str(source[key]))
                break
        else:
            raise ValueError(
                f"run {run.get('run_name')!r} ({run.get('run_id')}) has no tag or param {key!r} to group by; "
                f"tags: {sorted(run.get('tags', {}))}, params: {sorted(run.get('params', {}))}"
            )
    return ", ".join(values)


def group_mean_sd(
    histories: Iterable[Mapping[str, Any]], group_by: GroupBy, metric: str, smooth: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per group, the mean and standard deviation over runs of one metric, step by step.

    Args:
        histories: runs as returned by :func:`read_metric_histories`.
        group_by: tag (or param, or top-level key such as ``"run_name"``) whose value names the group;
            a sequence of keys joins their values with ``", "``; a callable maps a run dict to a label.
            A run lacking the key raises ``ValueError``.
        metric: metric key.
        smooth: centred moving-average window (:func:`moving_average`) applied to each run's own logged
            points before aggregation; 0 or 1 leaves the values as logged.

    Returns:
        ``{group: (steps, mean, sd)}`` (groups in sorted order, each with at least one logged point).
        Runs of a group may be logged on different step grids: they are aligned on the *union* of their
        steps, and a run contributes to a step only where it has a value there (no interpolation), so the
        number of runs behind a point can vary along the curve. If a run logged a step twice, its last
        value counts. ``sd`` is the sample standard deviation (``ddof=1``) where at least two runs
        contribute and NaN where only one does. Non-finite logged values propagate.
    """
    per_group: dict[str, list[dict[int, float]]] = {}
    for run in histories:
        label = _group_label(run, group_by)
        points = run.get("histories", {}).get(metric, [])
        if not points:
            continue
        points = sorted(points, key=lambda p: p[0])  # stable: the later of two equal steps stays last
        values = moving_average([v for _, v in points], smooth)
        per_group.setdefault(label, []).append(dict(zip((int(s) for s, _ in points), values, strict=True)))
    out = {}
    for label in sorted(per_group):
        runs = per_group[label]
        steps = np.array(sorted(set().union(*runs)), dtype=int)
        mean, sd = np.empty(steps.size), np.full(steps.size, np.nan)
        for i, step in enumerate(steps):
            vals = np.array([run[step] for run in runs if step in run], dtype=float)
            mean[i] = vals.mean()
            if vals.size > 1:
                sd[i] = vals.std(ddof=1)
        out[label] = (steps, mean, sd)
    return out


# --------------------------------------------------------------------------------------------- plots
def convergence_figure(
    histories: Sequence[Mapping[str, Any]],
    group_by: GroupBy = "method",
    metrics: Sequence[str] = DEFAULT_METRICS,
    smooth: int | Mapping[str, int] = 0,
    title: str = "",
    xlabels: Mapping[str, str] | None = None,
):
    """The ``matplotlib.figure.Figure`` that :func:`convergence_curves` saves (see there)."""
    histories = list(histories)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not histories:
        raise ValueError("no runs to plot")
    if not metrics:
        raise ValueError("no metrics to plot")
    windows = {m: int(smooth.get(m, 0) if isinstance(smooth, Mapping) else smooth) for m in metrics}
    curves = {metric: group_mean_sd(histories, group_by, metric, windows[metric]) for metric in metrics}
    empty = [metric for metric, groups in curves.items() if not groups]
    if empty:
        logged = sorted({k for run in histories for k, v in run.get("histories", {}).items() if v})
        raise ValueError(f"no run has values for metric(s) {empty}; metrics with values: {logged}")
    labels = sorted({label for groups in curves.values() for label in groups})
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    xlabels = {**_X_LABELS, **(xlabels or {})}

    fig = new_figure((5.0 * len(metrics), 4.0))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for label, (steps, mean, sd) in curves[metric].items():
            n_runs = sum(
                1
                for run in histories
                if _group_label(run, group_by) == label and run["histories"].get(metric)
            )
            marker = "o" if steps.size <= 20 else None  # a few validation points stay visible
            ax.plot(
                steps, mean, color=colours[label], lw=1.5, marker=marker, ms=4, label=f"{label} (n={n_runs})"
            )
            if np.isfinite(sd).any():
                ax.fill_between(steps, mean - sd, mean + sd, color=colours[label], alpha=0.2, lw=0)
        ax.set_xlabel(xlabels.get(metric, "step"))
        ax.set_ylabel(
            metric + (f" (moving average, {windows[metric]} points)" if windows[metric] > 1 else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def convergence_curves(
    histories: Sequence[Mapping[str, Any]],
    group_by: GroupBy = "method",
    path: str | os.PathLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    smooth: int | Mapping[str, int] = 0,
    title: str = "",
    xlabels: Mapping[str, str] | None = None,
) -> Path:
    """Convergence plot (PNG): one subplot per metric, one line per group of runs.

    Reads ``histories`` (the output of :func:`read_metric_histories`). Each line is the mean over the
    group's runs (typically the seeds of one method) at each logged step, as computed by
    :func:`group_mean_sd` (union of the runs' steps; a run contributes where it has a value), with a
    shaded mean ± sd band where at least two runs contribute; the legend gives each group's number of
    runs. ``smooth`` > 1 applies a centred moving average of that many logged points to each run first;
    a mapping ``{metric: window}`` smooths per metric (e.g. ``{"train_loss": 20}``, leaving the few
    validation points as they are).
    The x axis is the step as logged: iterations for ``train_loss``/``Loss``/``lr_group_0``, epochs for
    ``train_mean_dice``/``val_mean_dice``, "step" otherwise (override with ``xlabels={metric: label}``).

    ``path`` is required (it may be given positionally after ``group_by``). The PNG is written atomically;
    returns its path. Raises ``ValueError`` when there are no runs or a metric has no values in any run.
    """
    if path is None:
        raise TypeError("convergence_curves() needs a path for the PNG")
    fig = convergence_figure(histories, group_by, metrics, smooth, title, xlabels)
    return save_figure(fig, path, dpi=120)


# --------------------------------------------------------------------------------------------- ranks
def mean_ranks(scores: Mapping[str, Mapping[str, float]], higher_is_better: bool = True) -> dict[str, float]:
    """Each encoder's mean rank over tasks.

    Args:
        scores: ``scores[task][encoder]`` = the encoder's score on the task (e.g. mean Dice or AUC).
        higher_is_better: rank 1 goes to the highest score (``False``: to the lowest, e.g. for errors).

    Within a task, rank 1 is the best and ties share the average of the ranks they span
    (``scipy.stats.rankdata(..., method="average")``); the result averages each encoder's ranks over
    the tasks, ``{encoder: mean rank}`` in order of first appearance.

    Raises:
        ValueError: no tasks, an empty task, a non-finite score, or an encoder (of any task) missing from
            a task -- the message names the task and the encoder(s).
    """
    from scipy.stats import rankdata

    if not scores:
        raise ValueError("no tasks to rank encoders on")
    encoders = list(dict.fromkeys(enc for task_scores in scores.values() for enc in task_scores))
    ranks = {enc: [] for enc in encoders}
    for task, task_scores in scores.items():
        missing = [enc for enc in encoders if enc not in task_scores]
        if missing:
            raise ValueError(f"task {task!r} has no score for encoder(s) {missing}")
        values = np.array([float(task_scores[enc]) for enc in encoders])
        bad = [enc for enc, v in zip(encoders, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"task {task!r} has non-finite score(s) for encoder(s) {bad}")
        task_ranks = rankdata(-values if higher_is_better else values, method="average")
        for enc, rank in zip(encoders, task_ranks, strict=True):
            ranks[enc].append(float(rank))
    return {enc: float(np.mean(r)) for enc, r in ranks.items()}


def cross_task_rank_figure(
    segmentation_scores: Mapping[str, Mapping[str, float]],
    classification_scores: Mapping[str, Mapping[str, float]],
    title: str = "",
    higher_is_better: bool = True,
):
    """The ``matplotlib.figure.Figure`` that :func:`cross_task_rank_plot` saves (see there)."""
    seg = mean_ranks(segmentation_scores, higher_is_better)
    cls = mean_ranks(classification_scores, higher_is_better)
    if set(seg) != set(cls):
        raise ValueError(
            f"encoders differ between segmentation and classification scores: only segmentation "
            f"{sorted(set(seg) - set(cls))}, only classification {sorted(set(cls) - set(seg))}"
        )
    n = len(seg)
    fig = new_figure((5.5, 5.5))
    ax = fig.add_subplot()
    lims = (n + 0.5, 0.5)  # inverted: rank 1 (best) at the right / top
    ax.plot([lims[0], lims[1]], [lims[0], lims[1]], ls="--", color="0.6", lw=1, label="same rank")
    for i, enc in enumerate(seg):
        ax.scatter([seg[enc]], [cls[enc]], color=f"C{i % 10}", s=40, zorder=3)
        ax.annotate(enc, (seg[enc], cls[enc]), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.set_xlim(*lims)
    ax.set_ylim(*lims)
    ax.set_aspect("equal")
    ax.set_xlabel(f"mean rank, segmentation ({len(segmentation_scores)} tasks)  \u2192 better")
    ax.set_ylabel(f"mean rank, classification ({len(classification_scores)} tasks)  \u2192 better")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or f"{n} encoders: rank 1 = best (top right)", fontsize=10)
    fig.tight_layout()
    return fig


def cross_task_rank_plot(
    segmentation_scores: Mapping[str, Mapping[str, float]],
    classification_scores: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    title: str = "",
    higher_is_better: bool = True,
) -> Path:
    """Cross-task ranking plot (PNG), as in DINOv2-radiology's comparison of encoders.

    Reads ``scores[task][encoder]`` for segmentation and classification tasks and draws one labelled
    point per encoder at (x = mean rank over the segmentation tasks, y = mean rank over the
    classification tasks) from :func:`mean_ranks`, with the diagonal (same rank on both) dashed. Both
    axes run from the worst rank to rank 1, so better is right and up: encoders above the diagonal
    rank better on classification than on segmentation. Both score sets must cover the same encoders
    (``ValueError`` otherwise). Written atomically; returns the path.
    """
    fig = cross_task_rank_figure(segmentation_scores, classification_scores, title, higher_is_better)
    return save_figure(fig, path, dpi=120)
