"""A micro benchmark matrix through the real path: scratch + one ready encoder, 1 shot, 1 seed, 1 epoch."""

import csv
import importlib.util
import math
import re

import pytest

from common.bundle import REPO_ROOT
from common.evaluation.curves import read_metric_histories
from common.networks import SwinEncoder, save_encoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", REPO_ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_micro_matrix_resumes(prepared_data, tmp_path):
    encoder = save_encoder(SwinEncoder(feature_size=12), tmp_path / "random_encoder.pt", method="random")
    work_dir = tmp_path / "bench"
    kwargs = dict(
        methods=[],
        encoders={"random": str(encoder)},
        shots=[1],
        seeds=[0],
        work_dir=str(work_dir),
        feature_size=12,
        pixdim=4.0,
        roi_size=[64, 64, 32],
        num_samples=1,
        finetune_epochs=1,
    )
    main = _benchmark_module().main
    main(**kwargs, report=False)

    rows = _rows(work_dir / "results.csv")
    assert [r["cell"] for r in rows] == ["scratch_1shot_seed0", "random_1shot_seed0"]
    for row in rows:
        assert math.isfinite(float(row["mean_dice"])), row
        assert row["task"] == "multiorgan_ct_segmentation" and row["shots"] == "1" and row["seed"] == "0"
    assert rows[0]["encoder"] == "" and rows[1]["encoder"] == str(encoder)

    db = work_dir / "mlruns.db"
    runs = read_metric_histories(
        db, tags_filter={"task": "multiorgan_ct_segmentation", "shots": 1, "seed": 0}
    )
    assert sorted(r["tags"]["method"] for r in runs) == ["random", "scratch"]
    assert {r["run_id"] for r in runs} == {row["run_id"] for row in rows}
    assert {r["run_name"] for r in runs} == {"scratch_1shot_seed0", "random_1shot_seed0"}
    assert all(r["histories"]["train_loss"] for r in runs)

    table = (work_dir / "results.md").read_text()
    assert "| cell |" in table and "scratch_1shot_seed0" in table and "random_1shot_seed0" in table

    # a second invocation finds every cell done: no new row, no new MLflow run; it writes the report
    main(**kwargs)
    assert _rows(work_dir / "results.csv") == rows
    assert len(read_metric_histories(db, metrics=[])) == 2
    _check_report(work_dir / "report" / "report.md", rows)

    # resuming with sizes that change what a cell computes is refused, naming the file and the key
    with pytest.raises(ValueError, match=r"settings\.json.*finetune_epochs: 1 -> 2"):
        main(**{**kwargs, "finetune_epochs": 2})


def _check_report(report, rows):
    """Every section is there, every figure link points at a PNG next to the report, and the main table
    holds the cells' values."""
    text = report.read_text()
    for heading in (
        "Held-out mean Dice",
        "Per-organ Dice",
        "Convergence",
        "Pre-trained vs fine-tuned encoder",
        "Organ embeddings",
        "Patch-feature PCA",
        "Lesion classification",
        "Cross-task ranking",
    ):
        assert f"## {heading}" in text, heading
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    captions = sorted(caption for caption, _ in links)
    assert captions == sorted(
        [
            "convergence curves",
            "CKA random",
            "cross-task ranks",
            *(f"{kind} {m}" for m in ("scratch", "random") for kind in ("t-SNE", "PCA", "patch PCA", "ROC")),
        ]
    )
    for _, target in links:
        assert (report.parent / target).read_bytes()[:8] == PNG_MAGIC, target
    for row in rows:  # n = 1 seed: mean = the cell's value, sd undefined
        assert f"| {row['method']} | 1 | 1 | {float(row['mean_dice']):.3f} ± n/a |" in text
