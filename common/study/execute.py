"""One cell (or step) of a study, run in its own process: ``python -m common.study.execute <spec.json>``.

The runner (:mod:`common.study.runner`) writes the cell's spec (:class:`~common.study.spec.Item`) to
``<out>/spec.json`` and starts this module with stdout/stderr going to ``<out>/log.txt``. It runs the
bundle runs of the spec in order through ``monai.bundle``'s :class:`~monai.bundle.ConfigWorkflow`
(:func:`common.evaluation.bundle_runs.workflow`, ``ckpt_dir`` = ``<out>/models``, ``output_dir`` =
``<out>/eval``), reads the metrics with the spec's readers, logs the cell to the study's MLflow store
(tags: study, cell, task, encoder, protocol, shots, seed, bundle, encoder file, published record; the
metrics), and writes ``<out>/result.json`` atomically: ``{"status": "done", "metrics", "seconds",
"run_id"}`` or ``{"status": "failed", "error"}``. A cell whose ``result.json`` says done is finished.

Metric readers (``metrics`` of a task, a list):

- ``{"reader": "evaluator", "keys": [...]}``: the last workflow's ``validate#evaluator`` metrics
  (``[]``: all of them);
- ``{"reader": "heldout", "pixdim", "datalist", "classes", "annotated_from_source", "novel"}``: per-class
  Dice of the saved prediction on the held-out subject (:func:`~common.evaluation.heldout.score_heldout`):
  ``mean_dice``, one value per class of ``classes``, and with ``novel`` the mean over classes seen /
  not seen by SuPreM's pre-training (``seen_dice``/``novel_dice``); ``annotated_from_source`` scores only
  the classes the test subject's source annotates;
- ``{"reader": "json", "file", "keys"}`` (a JSON object: those keys) or ``{"reader": "json", "file",
  "key_field", "value_field"}`` (a list of rows: ``{row[key_field]: row[value_field]}``), relative to
  the cell's folder;
- ``{"reader": "trainable_share"}``: the share of trainable parameters of the last workflow's
  ``network_def`` (:func:`~common.networks.trainable_share`).
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.datalists import write_json

__all__ = ["RESULT_FILE", "read_result", "run_item"]

RESULT_FILE = "result.json"


def read_result(out: str | Path) -> dict | None:
    """``<out>/result.json``, or None when the cell has not finished (or its file is unreadable)."""
    path = Path(out) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def error_text(err: BaseException) -> str:
    """``Type: message`` of ``err`` and of the errors that caused it (a bundle's instantiation error wraps
    the one that names the bad value), joined by `` <- ``."""
    parts = []
    while err is not None and len(parts) < 5:
        parts.append(f"{type(err).__name__}: {str(err).strip()}")
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)


def _number(value):
    if hasattr(value, "item"):
        value = value.item()
    return round(float(value), 6) if isinstance(value, int | float) and math.isfinite(value) else None


def _heldout(spec: Mapping, reader: Mapping) -> dict:
    from ..bundle import REPO_ROOT
    from ..data.partial_labels import SUPREM_CLASSES, annotated_mask, covered_structures
    from ..evaluation.heldout import DATALIST, score_heldout

    datalist = REPO_ROOT / reader["datalist"] if "datalist" in reader else DATALIST
    annotated = None
    if reader.get("annotated_from_source"):
        source = json.loads(datalist.read_text())
        sources = source["sources"][source["test"][0]["source"]]["annotated"]
        annotated = annotated_mask(sources, SUPREM_CLASSES)
    pixdim = reader.get("pixdim", spec["overrides"].get("pixdim"))
    result = score_heldout(Path(spec["out"]) / "eval", pixdim, datalist, annotated)
    metrics = {"mean_dice": _number(np.nanmean(result.dice))}
    metrics.update({name: _number(result.dice_of(name)) for name in reader.get("classes", [])})
    if reader.get("novel"):
        novel = np.array([name not in covered_structures() for name in result.names])
        for key, mask in (("seen_dice", ~novel), ("novel_dice", novel)):
            values = result.dice[mask]
            metrics[key] = _number(np.nanmean(values)) if np.isfinite(values).any() else None
    return metrics


def _json(spec: Mapping, reader: Mapping) -> dict:
    path = Path(spec["out"]) / reader["file"]
    data = json.loads(path.read_text())
    if "key_field" in reader:
        return {str(row[reader["key_field"]]): _number(row.get(reader["value_field"])) for row in data}
    missing = [k for k in reader.get("keys", []) if k not in data]
    if missing:
        raise KeyError(f"{path}: no key(s) {missing} (keys: {sorted(data)})")
    return {k: _number(data[k]) for k in reader.get("keys", [])}


def _read_metrics(spec: Mapping, flow) -> dict:
    from ..networks import trainable_share

    metrics: dict = {}
    for reader in spec["metrics"]:
        kind = reader.get("reader")
        if kind == "evaluator":
            state = dict(flow.parser.get_parsed_content("validate#evaluator").state.metrics)
            missing = [k for k in reader.get("keys", []) if k not in state]
            if missing:
                raise KeyError(f"{spec['bundle']}: the evaluator has no {missing} (metrics: {sorted(state)})")
            metrics.update({k: _number(v) for k, v in state.items() if k in reader.get("keys", state)})
        elif kind == "heldout":
            metrics.update(_heldout(spec, reader))
        elif kind == "json":
            metrics.update(_json(spec, reader))
        elif kind == "trainable_share":
            metrics["trainable_share"] = trainable_share(flow.parser.get_parsed_content("network_def"))[
                "share"
            ]
        else:
            raise ValueError(f"{spec['name']}: unknown metric reader {kind!r}")
    return metrics


def _run_bundle(spec: Mapping, tracking_uri: str):
    """Run every bundle run of ``spec``; returns the last workflow (its parser holds the evaluator)."""
    from ..evaluation import bundle_runs

    out, flow = Path(spec["out"]), None
    for run in spec["runs"]:
        if "export" in run:
            bundle_runs.export_torchscript(spec["bundle"], out, run["input_shape"], **spec["overrides"])
            continue
        tracking = None
        extra = {}
        if run.get("track"):
            tracking = "mlflow"
            extra = {
                "tracking_uri": tracking_uri,
                "experiment_name": spec["experiment"],
                "run_name": spec["id"],
            }
        flow = bundle_runs.workflow(
            spec["bundle"], run["configs"], run["id"], out, tracking=tracking, **spec["overrides"], **extra
        )
        flow.run()
        flow.finalize()
    return flow


def run_item(spec: Mapping) -> dict:
    """Run one cell or step (see the module docstring); returns and writes its result."""
    from ..evaluation.matrix import tag_run

    start = time.time()
    out = Path(spec["out"])
    try:
        flow = _run_bundle(spec, spec["tracking_uri"])
        metrics = _read_metrics(spec, flow) if spec["metrics"] else {}
        if spec.get("output_path") and not Path(spec["output_path"]).exists():
            raise FileNotFoundError(
                f"{spec['name']}: the step did not write its output {spec['output_path']}"
            )
        result = {"status": "done", "metrics": metrics, "seconds": round(time.time() - start, 1)}
        if spec["kind"] == "cell":
            tags = {"study": spec["study"], "cell": spec["id"], "bundle": spec["bundle"], **spec["axes"]}
            tags["encoder_file"] = spec.get("encoder_file") or ""
            tags.update(spec.get("published_tags") or {})
            result["run_id"] = tag_run(spec["tracking_uri"], spec["experiment"], spec["id"], tags, metrics)
    except Exception as err:  # recorded, so the other cells still run
        traceback.print_exc()
        result = {
            "status": "failed",
            "error": error_text(err),
            "seconds": round(time.time() - start, 1),
        }
    write_json(result, out / RESULT_FILE, default=str)
    return result


if __name__ == "__main__":
    result = run_item(json.loads(Path(sys.argv[1]).read_text()))
    sys.exit(0 if result["status"] == "done" else 1)
