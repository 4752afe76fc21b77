"""The performance benchmark suite end to end for one SSL method and the segmentation bundle, 1 repeat.

Checks the table's shape and that every ratio is a finite positive number; the ratios are measured,
never compared with a threshold (timings depend on the machine and its load).
"""

import csv
import importlib.util
import math

import numpy as np
import pytest
from monai.bundle import ConfigParser

from common.bundle import REPO_ROOT
from common.bundle_checks import smoke_overrides
from common.evaluation.bundle_runs import bundle_dir


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_table(prepared_data, tmp_path):
    bench = _bench_module()
    md_path = bench.main(only="simmim,multiorgan", repeats=1, warmup=0, out=str(tmp_path))

    with (tmp_path / "bench.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [column for column, _, _ in bench.COLUMNS]
        rows = {row["bundle"]: row for row in reader}
    assert set(rows) == {"simmim_ssl_pretrain", "multiorgan_ct_segmentation"}
    for name, row in rows.items():
        sliding = name == "multiorgan_ct_segmentation"
        for ratio in bench.RATIOS:
            if ratio == "sliding_window_ratio" and not sliding:
                assert row[ratio] == ""  # no sliding-window inferer in an SSL bundle
                continue
            value = float(row[ratio])
            assert math.isfinite(value) and value > 0, (name, ratio, row[ratio])

    table = (tmp_path / "bench.md").read_text()
    assert md_path == str(tmp_path / "bench.md")
    assert "| " + " | ".join(header for _, header, _ in bench.COLUMNS) + " |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 3  # header + two bundles


def test_bench_data_table(prepared_data, tmp_path, monkeypatch):
    """``tools/bench.py data`` end to end at N = 2 and smoke sizes: a start-up row (seconds, peak RSS) for
    each data path, and a loader row (samples/s, against NIfTI and the model) for each."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tools"))  # as `python tools/bench.py data` runs it
    from bench_data import PATHS, main

    sizes = {"feature_size": 12, "global_size": 32}
    md_path = main(
        sizes=[2],
        pixdim=6.0,
        startup_sizes={**sizes, "num_workers": 0},
        throughput_sizes=sizes,
        repeats=1,
        warmup=0,
        samples=1,
        out=str(tmp_path),
    )
    with (tmp_path / "data.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "2"
    for path in PATHS:
        for key in ("seconds", "rss_mb"):
            value = float(row[f"{path}_{key}"])
            assert math.isfinite(value) and value > 0, (path, key, value)
    lines = (tmp_path / "data.md").read_text().splitlines()
    assert md_path == str(tmp_path / "data.md")
    (startup,) = [line for line in lines if line.startswith("| 2 |")]
    assert len(startup.split("|")) == 9 and "—" not in startup
    for path in PATHS:
        (loader,) = [line for line in lines if line.startswith(f"| {path} |")]
        rates = [float(cell) for cell in loader.split("|")[2:5]]
        assert all(math.isfinite(r) and r > 0 for r in rates), loader
    assert "| nifti_uncached | " in "\n".join(lines) and "x NIfTI uncached" in "\n".join(lines)


def test_bench_sizes_restore_the_training_sizes():
    """``--size cpu``: the smoke run's data and batch, the defaults' network, views and crops, feature_size
    24; ``smoke``: smoke.json's; ``default``: the config as it is."""
    bench = _bench_module()
    simmim, suprem = bundle_dir("simmim_ssl_pretrain"), bundle_dir("suprem_pretrain")
    assert bench.size_overrides(simmim, "train.json", "smoke") == smoke_overrides(simmim, "train.json")
    assert bench.size_overrides(simmim, "train.json", "default") == {}

    def parsed(bundle, size, *keys):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        parser.update(bench.size_overrides(bundle, "train.json", size))
        return [parser[key] for key in keys]

    smoke = ConfigParser.load_config_file(str(simmim / "configs" / "smoke.json"))
    assert parsed(simmim, "cpu", "feature_size", "global_size", "pixdim", "batch_size", "datalist") == [
        24,
        96,
        2.0,
        smoke["batch_size"],
        smoke["datalist"],
    ]
    assert parsed(suprem, "cpu", "backbone", "feature_size", "roi_size") == ["swinunetr", 24, [96, 96, 96]]
    organ = parsed(bundle_dir("ct_organ_classification"), "cpu", "encoder_config")[0]
    assert organ["feature_size"] == 24
    with pytest.raises(ValueError, match="--size must be one of"):
        bench.size_overrides(simmim, "train.json", "gpu")


def test_peak_memory_restarts_at_reset():
    bench = _bench_module()
    bench.reset_peak_memory()
    base = bench.peak_memory_mb()
    if base is None:
        pytest.skip("no /proc/self/status on this system")
    block = np.ones(100 * 2**20 // 8)  # 100 MB
    assert bench.peak_memory_mb() - base >= 90
    del block
    bench.reset_peak_memory()
    assert bench.peak_memory_mb() < base + 50


def test_bench_inference_table(prepared_data, tmp_path, monkeypatch):
    """``tools/bench.py inference`` end to end on the segmentation bundle's config with its small U-Net
    (``arch`` unet, feature_size 8, 32³ windows): a row per predictor with a positive rate, and the exported
    runtimes give eager's output."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tools"))
    from bench_inference import main

    md_path = main(
        repeats=1,
        warmup=0,
        overrides={"arch": "unet", "feature_size": 8, "roi_size": [32, 32, 32]},
        out=str(tmp_path),
    )
    rows = {
        line.split("|")[1].strip(): [cell.strip().strip("*") for cell in line.split("|")[2:6]]
        for line in (tmp_path / "inference.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| predictor")
    }
    assert md_path == str(tmp_path / "inference.md")
    assert set(rows) == {"eager", "TorchScript", "ONNX Runtime", "MONAI"}
    for name, (seconds, rate, ratio, difference) in rows.items():
        assert float(seconds) > 0 and float(rate.replace(",", "")) > 0 and float(ratio) > 0, name
        assert float(difference) <= (1e-2 if name == "ONNX Runtime" else 1e-4), (name, difference)
