"""The small benchmark study (``tools/studies/benchmark_small.json``, ``make benchmark``) at a micro size
through the real path: scratch + one ready Swin encoder file, 1 shot, 1 seed, 1 epoch, then its report
with every section (statistics, per-organ Dice, curves from MLflow, CKA, embeddings + retrieval, patch PCA,
lesion classification, cross-task ranks)."""

import json
import math
import re

from common.bundle import REPO_ROOT
from common.evaluation.curves import read_metric_histories
from common.networks import SwinEncoder, save_encoder
from common.study import build_report, run_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCHMARK = REPO_ROOT / "tools" / "studies" / "benchmark_small.json"


def micro_benchmark(encoder) -> dict:
    """``benchmark_small.json`` with a ready encoder file instead of the pre-training steps, at 1 epoch."""
    study = json.loads(BENCHMARK.read_text())
    study["steps"] = {}
    study["encoders"] = {"scratch": {}, "random": {"file": str(encoder)}}
    study["tasks"]["seg"]["overrides"].update(max_epochs=1, val_interval=1, num_samples=1)
    study["matrix"] = [{"tasks": ["seg"], "encoders": ["scratch", "random"], "shots": ["1"], "seeds": [0]}]
    return study


def test_micro_benchmark_study_and_report(prepared_data, tmp_path):
    encoder = save_encoder(SwinEncoder(feature_size=12), tmp_path / "random_encoder.pt", method="random")
    study = tmp_path / "benchmark_micro.json"
    study.write_text(json.dumps(micro_benchmark(encoder)))
    work_dir = tmp_path / "bench"
    record = run_study(study, jobs=2, work_dir=work_dir)

    cells = sorted(record["cells"].values(), key=lambda c: c["encoder"], reverse=True)
    assert [c["name"] for c in cells] == ["seg.scratch.1shot.seed0", "seg.random.1shot.seed0"]
    for cell in cells:
        assert cell["status"] == "done" and math.isfinite(cell["metrics"]["mean_dice"]), cell
        assert set(cell["metrics"]) == {"mean_dice", "liver", "spleen", "stomach"}
    assert cells[0]["encoder_file"] is None and cells[1]["encoder_file"] == str(encoder.resolve())
    runs = read_metric_histories(work_dir / "mlruns.db", tags_filter={"task": "seg", "shots": 1, "seed": 0})
    assert sorted(r["tags"]["encoder"] for r in runs) == ["random", "scratch"]
    assert {r["run_id"] for r in runs} == {c["run_id"] for c in cells}
    assert all(r["histories"]["train_loss"] for r in runs)

    _check_report(build_report(study, work_dir), cells)


def _check_report(report, cells):
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
    for cell in cells:  # n = 1 seed: mean = the cell's value, sd undefined
        assert f"| {cell['encoder']} | 1 | 1 | {cell['metrics']['mean_dice']:.3f} ± n/a |" in text
