"""The README's demo command, shrunk to one epoch: it trains, evaluates and reports through monai.bundle."""

import importlib.util
import sqlite3

from common.bundle import REPO_ROOT


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_prints_the_dice_table_and_saves_the_overlay(prepared_data, tmp_path, capsys):
    demo = _demo_module()
    demo.main(
        max_epochs=1, feature_size=8, pixdim=6.0, roi=32, num_samples=1, val_interval=1, work_dir=tmp_path
    )
    out = capsys.readouterr().out
    assert "| liver |" in out and "| spleen |" in out and "trivial predictor" in out
    assert (tmp_path / "eval" / "demo_overlay.png").stat().st_size > 10_000
    assert (tmp_path / "eval" / "totalseg_A_ct_seg.nii.gz").is_file()
    with sqlite3.connect(tmp_path / "eval" / "mlruns.db") as con:
        assert con.execute("select count(*) from metrics where key = 'train_loss'").fetchone()[0] >= 1
