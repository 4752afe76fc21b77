"""Training killed with SIGKILL resumes from its last checkpoint and ends with the uninterrupted weights.

For the segmentation bundle and one SSL bundle (SimMIM): an uninterrupted tiny run through ``monai.bundle``
(in this process), then the same run through ``python -m monai.bundle run training`` in a subprocess, killed
with SIGKILL half an epoch after it wrote the interval checkpoint of epoch 2 (so mid-way through epoch 3,
give or take the timing), resumed from the newest ``checkpoint_epoch=<k>.pt`` left on disk with
``--resume_from``; every tensor of the final checkpoint (network, optimiser, scheduler) and of the best /
encoder file must be equal
(``torch.equal``) to the uninterrupted run's. The runs are CPU, fp32, with the configs' ``deterministic``
switch on (torch's deterministic algorithms) and one thread count for all of them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import run
from monai.data import DataLoader, Dataset
from monai.transforms import RandGaussianNoise
from monai.utils import set_determinism

from common import bundle_checks as bc
from common.atomic import TMP_PREFIX
from common.bundle import REPO_ROOT
from common.engines import EpochReseedHandler

KILL_AFTER_EPOCH = 2
MAX_EPOCHS = 4
BOTH_TRAINING_VOLUMES = (
    "$common.data.load_datalist(@datalist_file, @train_datalist_key, @dataset_dir, num_classes=@num_classes)"
)
CASES = {
    # U-Net on 6 mm voxels, both training volumes (two iterations an epoch, so the sampler's order matters),
    # validation every other epoch (the best-model record crosses the resume).
    "multiorgan_ct_segmentation": {
        "overrides": {
            "arch": "unet",
            "feature_size": 4,
            "pixdim": [6.0, 6.0, 6.0],
            "roi_size": [32, 32, 32],
            "val_interval": 2,
            "train#dataset#data": BOTH_TRAINING_VOLUMES,
        },
        "final": "model_final.pt",
        "others": ["model.pt"],
    },
    # Two iterations an epoch over the smoke's one volume: the loader restarts inside every epoch.
    "simmim_ssl_pretrain": {
        "overrides": {"epoch_length": 2, "warmup_epochs": 1},
        "final": "model.pt",
        "others": ["encoder.pt"],
    },
}


def _overrides(name: str, work: Path) -> dict:
    return {
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "max_epochs": MAX_EPOCHS,
        "save_interval": 1,
        "deterministic": True,  # Swin's relative-position-bias gradient is otherwise summed in a racy order
        **CASES[name]["overrides"],
    }


def _config_files(name: str) -> list[str]:
    bundle = REPO_ROOT / "bundles" / name
    return [bc.config_path(bundle, "train.json"), bc.config_path(bundle, "smoke.json")]


def _start(name: str, work: Path, log: str, **extra) -> subprocess.Popen:
    """``python -m monai.bundle run training`` with the case's overrides, logging to ``work/<log>``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training"]
    cmd += ["--config_file", json.dumps(_config_files(name))]
    for key, value in {**_overrides(name, work), **extra}.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]  # read by python-fire
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # this process's thread count
    with open(work / log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)


def _epoch_checkpoints(models: Path) -> dict[int, Path]:
    found = {}
    for path in models.glob("checkpoint_epoch=*.pt"):
        found[int(re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name).group(1))] = path
    return found


def _kill_mid_epoch(proc: subprocess.Popen, models: Path, epoch: int, timeout: float = 600) -> None:
    """SIGKILL ``proc`` half an epoch after its checkpoint of ``epoch`` (or a later one) appeared, the
    epoch's duration measured from the previous checkpoint's appearance; it must still be running."""
    deadline, seen = time.monotonic() + timeout, {}
    while not any(e >= epoch for e in seen):
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before its epoch-{epoch} checkpoint")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no epoch-{epoch} checkpoint in {timeout} s")
        for e in _epoch_checkpoints(models):
            seen.setdefault(e, time.monotonic())
        time.sleep(0.01)
    last = max(seen)
    time.sleep((seen[last] - seen[last - 1]) / 2 if last - 1 in seen else 0.0)
    assert proc.poll() is None, "the training finished before it could be killed: make the epochs longer"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) checkpoint, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    out = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}/{key}"))
    return out


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_training_killed_mid_run_resumes_to_the_uninterrupted_weights(name, prepared_data, tmp_path):
    case = CASES[name]
    whole, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    run("training", config_file=_config_files(name), **_overrides(name, whole))

    _kill_mid_epoch(_start(name, killed, "killed.log"), killed / "models", KILL_AFTER_EPOCH)
    assert not (killed / "models" / case["final"]).exists()
    for path in (killed / "models").glob("*.pt"):  # every checkpoint left by the kill is complete ...
        if not path.name.startswith(TMP_PREFIX):  # ... but the temporary file of a write it interrupted
            _load(path)
    last_epoch, last = max(_epoch_checkpoints(killed / "models").items())
    assert KILL_AFTER_EPOCH <= last_epoch < MAX_EPOCHS
    assert _load(last)["trainer"]["iteration"] % _load(last)["trainer"]["epoch_length"] == 0

    resumed = _start(name, killed, "resumed.log", resume_from=str(last))
    assert resumed.wait(timeout=600) == 0, (killed / "resumed.log").read_text()[-3000:]

    for file in [case["final"], *case["others"]]:
        expected, got = _tensors(_load(whole / "models" / file)), _tensors(_load(killed / "models" / file))
        assert expected.keys() == got.keys(), file
        differing = [key for key in expected if not torch.equal(expected[key], got[key])]
        assert not differing, f"{file}: {len(differing)} tensors differ, e.g. {differing[:5]}"
    # the resumed epochs changed the weights: the equality above is not that of an idle run
    before = _tensors(_load(last)["model"])
    after = _tensors(_load(whole / "models" / case["final"])["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


# The mechanism on its own: an epoch's random draws depend on the seed and the epoch number only.


def _draws_per_epoch(start_epoch: int, max_epochs: int, reseed: bool) -> dict[int, list[float]]:
    """Run a 3-iteration-epoch engine over a shuffled loader of a random transform (as MONAI's workflows
    do, resuming at ``start_epoch``); return each epoch's values (sampler order and transform noise)."""
    set_determinism(seed=0)  # what a bundle's `initialize` does once at start-up
    items = [np.full((1, 2), float(i), dtype=np.float32) for i in range(4)]
    data = Dataset(items, RandGaussianNoise(prob=1.0))
    loader = DataLoader(data, batch_size=1, shuffle=True, num_workers=0)
    draws: dict[int, list[float]] = {}

    def step(engine, batch):
        draws.setdefault(engine.state.epoch, []).append(float(batch.sum()) + float(torch.rand(())))

    engine = Engine(step)
    engine.data_loader = loader
    if reseed:
        EpochReseedHandler(seed=7).attach(engine)
    engine.load_state_dict({"iteration": 3 * start_epoch, "epoch_length": 3, "max_epochs": max_epochs})
    engine.run(loader)
    return draws


def test_reseeded_epochs_repeat_after_a_resume_and_differ_without_it():
    whole = _draws_per_epoch(0, 4, reseed=True)
    resumed = _draws_per_epoch(2, 4, reseed=True)
    assert resumed == {3: whole[3], 4: whole[4]}
    assert whole[3] != whole[4]  # each epoch still draws anew
    naive_whole, naive_resumed = _draws_per_epoch(0, 4, reseed=False), _draws_per_epoch(2, 4, reseed=False)
    assert naive_resumed[3] != naive_whole[3]


def test_reseeding_refuses_persistent_workers():
    loader = DataLoader(Dataset([0, 1]), num_workers=1, persistent_workers=True)
    engine = Engine(lambda e, b: None)
    engine.data_loader = loader
    with pytest.raises(ValueError, match="persistent_workers"):
        EpochReseedHandler(seed=0).attach(engine)
