"""The study runner through real subprocesses and ``monai.bundle``: a micro study (scratch and a random
ConvNeXt file x linear head and full fine-tuning x one seed, 64-pixel radiographs, one epoch) runs end to
end, is killed (SIGKILL) after its first cell and resumed (only unfinished cells run), a changed setting
reruns only the cells it affects, a failing cell is recorded while the others run, and the report is built
from the results and MLflow alone. Every ported study file parses and expands (``--dry_run``)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.bundle import REPO_ROOT
from common.evaluation.curves import read_metric_histories
from common.networks import build_encoder, save_encoder
from common.study import build_report, load_study, run_study

STUDIES = sorted((REPO_ROOT / "tools" / "studies").glob("*.json"))
CONVNEXT = {"in_channels": 1, "spatial_dims": 2, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def micro_study(encoder_file: Path, linear_lr: float = 1e-3, broken: bool = False) -> dict:
    matrix = [
        {"tasks": ["cls"], "encoders": ["scratch", "random"], "protocols": ["linear", "full"], "seeds": [0]}
    ]
    if broken:  # a protocol the classifier does not know: that cell fails, the others run
        matrix.append({"tasks": ["cls"], "encoders": ["scratch"], "protocols": ["broken"], "seeds": [0]})
    return {
        "description": "micro study",
        "sizes": {"encoder_config": CONVNEXT, "epochs": 1},
        "encoders": {"scratch": {}, "random": {"file": str(encoder_file)}},
        "tasks": {
            "cls": {
                "bundle": "radiograph_classification",
                "runs": [
                    {"id": "training", "configs": ["train.json"], "track": True},
                    {"id": "evaluating", "configs": ["train.json", "evaluate.json"]},
                ],
                "overrides": {
                    "encoder_config": "@sizes#encoder_config",
                    "image_size": 64,
                    "batch_size": 4,
                    "num_workers": 0,
                    "max_epochs": "@sizes#epochs",
                    "val_interval": 1,
                    "save_interval": 1,
                    "train#dataset#data": "$$common.data.load_datalist(@datalist_file, @train_datalist_key, "
                    "@dataset_dir, spatial_dims=2, label_key='')[::6]",
                },
                "metrics": [{"reader": "evaluator", "keys": ["val_auroc"]}, {"reader": "trainable_share"}],
            }
        },
        "protocols": {
            "full": {"protocol": "full"},
            "linear": {"protocol": "linear", "learning_rate": linear_lr},
            "broken": {"protocol": "no_such_protocol"},
        },
        "matrix": matrix,
        "report": {
            "sections": [
                {"kind": "results", "task": "cls", "metric": "val_auroc", "label": ["encoder", "protocol"]},
                {"kind": "table", "title": "Every cell"},
                {
                    "kind": "curves",
                    "task": "cls",
                    "label": ["encoder", "protocol"],
                    "metrics": ["train_loss"],
                },
            ]
        },
    }


def _write(path: Path, study: dict) -> Path:
    path.write_text(json.dumps(study, indent=2))
    return path


def _stamps(work_dir: Path) -> dict:
    """``{cell id: mtime of its result.json}`` for the finished cells."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (work_dir / "cells").glob("*/result.json")}


def _run_and_kill_after_first_cell(study: Path, work_dir: Path) -> None:
    log = work_dir.parent / "killed_run.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "common.study", "run", str(study), "--work_dir", str(work_dir)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: the kill reaches the running cell too
        )
        deadline = time.time() + 300
        try:
            while not any((work_dir / "cells").glob("*/result.json")):
                assert process.poll() is None, f"the study stopped early: {log.read_text()[-2000:]}"
                assert time.time() < deadline, "no cell finished in 300 s"
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_micro_study_resumes_reruns_changed_cells_and_records_failures(prepared_data, tmp_path, capsys):
    encoder = tmp_path / "random_convnext.pt"
    save_encoder(build_encoder("convnext", **CONVNEXT), encoder, encoder="convnext", encoder_config=CONVNEXT)
    study, work_dir = _write(tmp_path / "micro.json", micro_study(encoder)), tmp_path / "study"

    # --dry_run prints the cell list and runs nothing
    run_study(study, dry_run=True, work_dir=work_dir)
    ids = [c.id for c in load_study(study, work_dir).cells]
    printed = capsys.readouterr().out
    assert len(ids) == 4 and all(f"cell {i}  [pending]" in printed for i in ids)
    assert "4 items" in printed and not (work_dir / "cells").exists()

    # killed (SIGKILL) after its first cell: that cell is finished, the others are not
    _run_and_kill_after_first_cell(study, work_dir)
    first = _stamps(work_dir)
    assert len(first) in (1, 2) and set(first) < set(ids), first  # the cell running at the kill has none

    # rerun (2 in parallel): only the unfinished cells run
    record = run_study(study, jobs=2, work_dir=work_dir)
    stamps = _stamps(work_dir)
    assert {i: stamps[i] for i in first} == first
    assert set(stamps) == set(ids) and all(record["cells"][i]["status"] == "done" for i in ids)
    for cell in record["cells"].values():
        assert 0.0 <= cell["metrics"]["val_auroc"] <= 1.0
        assert (cell["metrics"]["trainable_share"] < 0.05) == (cell["protocol"] == "linear")
        assert (Path(cell["out"]) / "log.txt").read_text()
    runs = {r["run_id"]: r for r in read_metric_histories(work_dir / "mlruns.db", metrics=["train_loss"])}
    for cell_id, cell in record["cells"].items():  # every cell tagged in the one MLflow store
        tags = runs[cell["run_id"]]["tags"]
        assert (tags["cell"], tags["encoder"], tags["protocol"], tags["seed"]) == (
            cell_id,
            cell["encoder"],
            cell["protocol"],
            "0",
        )
        assert runs[cell["run_id"]]["histories"]["train_loss"]
        assert tags["encoder_file"] == (str(encoder.resolve()) if cell["encoder"] == "random" else "")

    # one changed setting (the linear head's learning rate) and a failing cell: only those run
    _write(study, micro_study(encoder, linear_lr=2e-3, broken=True))
    new_ids = [c.id for c in load_study(study, work_dir).cells]
    full = [i for i in ids if ".full." in i]
    assert set(new_ids) & set(ids) == set(full) and len(new_ids) == 5
    before = _stamps(work_dir)
    record = run_study(study, jobs=2, work_dir=work_dir)
    after = _stamps(work_dir)
    assert {i: after[i] for i in full} == {i: before[i] for i in full}
    states = {i: record["cells"][i]["status"] for i in new_ids}
    broken = [i for i in new_ids if ".broken." in i]
    assert states == {i: "failed" if i in broken else "done" for i in new_ids}
    assert "no_such_protocol" in record["cells"][broken[0]]["error"]
    assert set(record["cells"]) == set(new_ids)  # the results hold the study's cells, never a silent mix

    report = build_report(study, work_dir).read_text()
    assert f"`{study}`" in report and re.search(r"report written at `[0-9a-f]{40}", report)
    assert "5 cells: 4 done, 1 failed, 0 pending" in report
    for cell_id in new_ids:
        cell = record["cells"][cell_id]
        if cell["status"] == "done":
            assert f"| {cell['name']} | done | {cell['metrics']['trainable_share']:.3f} |" in report
    assert re.search(r"\| cls\.scratch\.broken\.seed0 \| failed \|.*no_such_protocol", report)
    assert "| random/full | — | 1 |" in report and "| scratch/linear | — | 1 |" in report
    (figure,) = re.findall(r"!\[convergence curves\]\(([^)]+)\)", report)
    assert (work_dir / "report" / figure).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("study", STUDIES, ids=[p.stem for p in STUDIES])
def test_ported_study_parses_and_expands(study, tmp_path, capsys):
    record = run_study(study, dry_run=True, work_dir=tmp_path)
    items = load_study(study, tmp_path).items
    printed = capsys.readouterr().out
    assert items and set(record["cells"]) == {i.id for i in items}
    assert all(f"{i.kind:4s} {i.id}  [pending]" in printed for i in items)
    assert len({i.id for i in items}) == len(items)
    for item in items:  # every step a cell needs is part of the study, before it
        assert all(dep in {s.id for s in load_study(study, tmp_path).steps.values()} for dep in item.deps)


def test_study_file_errors_name_the_file_and_key(tmp_path):
    study = micro_study(tmp_path / "missing.pt")
    path = _write(tmp_path / "bad.json", {**study, "matrix": [{"tasks": ["cls"], "encoders": ["nope"]}]})
    with pytest.raises(ValueError, match=r"bad\.json: matrix#0#encoders: \['nope'\] not declared"):
        load_study(path)
    path = _write(tmp_path / "bad.json", {**study, "matrix": [{"tasks": ["cls"], "encoders": ["random"]}]})
    with pytest.raises(ValueError, match=r"bad\.json: encoders#random#file: no file .*missing\.pt"):
        load_study(path)
    path = _write(tmp_path / "bad.json", {**study, "protcols": {}})
    with pytest.raises(ValueError, match=r"bad\.json: top level: unknown key\(s\) \['protcols'\]"):
        load_study(path)
    steps = {"a": {"bundle": "simmim_ssl_pretrain", "runs": [{"id": "training", "configs": ["train.json"]}]}}
    steps["a"]["overrides"] = {"x": "{step:b}"}
    steps["b"] = {**steps["a"], "overrides": {"x": "{step:a}"}}
    cyclic = {**study, "steps": steps, "encoders": {"s": {"step": "a"}}}
    cyclic["matrix"] = [{"tasks": ["cls"], "encoders": ["s"]}]
    with pytest.raises(ValueError, match=r"bad\.json: steps#a: circular dependency a -> b -> a"):
        load_study(_write(tmp_path / "bad.json", cyclic))
