"""A pre-training bundle through ``monai.bundle run``: MLflow gets every loss term, and training resumes
from its checkpoint where it stopped."""

import sqlite3

import torch
from monai.bundle import run

from common import bundle_checks as bc
from common.bundle import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "simmim_ssl_pretrain"


def _run(tmp_path, **overrides):
    files = [bc.config_path(BUNDLE, "train.json"), bc.config_path(BUNDLE, "smoke.json")]
    dirs = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run("training", config_file=files, **dirs, **overrides)


def test_mlflow_tracks_each_loss_term_and_the_learning_rate(prepared_data, tmp_path):
    _run(tmp_path, tracking="mlflow", max_epochs=2)
    with sqlite3.connect(tmp_path / "eval" / "mlruns.db") as con:
        keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert {"train_loss", "train_reconstruction", "lr"} <= keys


def test_training_resumes_from_its_checkpoint(prepared_data, tmp_path):
    _run(tmp_path, max_epochs=1)
    first = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert first["trainer"]["iteration"] == 1  # ignite keeps the iteration (epoch_length 1 here)
    _run(tmp_path, max_epochs=2, resume_from=str(tmp_path / "models" / "model.pt"))
    second = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert second["trainer"]["iteration"] == 2 and second["trainer"]["max_epochs"] == 2
    weights = first["model"]
    assert any(not torch.equal(weights[k], second["model"][k]) for k in weights)
