"""Issue 17 item 1: a pre-training bundle trains at its own defaults, and a learning rate of 2e-6 (what the
linear batch rule used to give DINO, iBOT, MAE and MoCo v3 at batch 4) does not.

Each run is built by ``monai.bundle`` from the bundle's own ``configs/train.json`` (the helper
:func:`common.evaluation.bundle_runs.workflow`) on its own datalist, and changed only where CPU cost forces
it:

- sizes: the bundle's ``smoke.json`` values of the keys in :data:`SIZE_KEYS` (encoder width, view sizes,
  voxel spacing, head widths, LeADER's stand-in teachers, data-loader workers);
- length: ``Case.steps`` optimiser steps (``epoch_length`` 1, ``max_epochs`` = steps). Every ``*_epochs``
  key of the schedule (learning-rate warm-up, teacher-temperature warm-up, LeADER's stage 1) and
  ``freeze_last_layer`` (epochs) are scaled by ``steps / max_epochs``, so the run has the default
  schedule's shape compressed: the warm-up is the same fraction of the run and the steps after it are at
  the real peak rate (then the cosine decay);
- batch: a 3D Swin step on one core costs seconds per volume, so the masked-image-modelling bundles run at
  ``Case.batch`` = 1 volume with ``learning_rate`` pinned to the value the bundle's rule gives at its default
  batch: the rate under test is the default rate. Coda runs at 16 of its 64 images per step the
  same way (two runs of 64 steps at 64 took minutes); LeADER runs at its default batch.

The learning rate, the optimiser, the loss settings and the schedule's shape are the defaults. Criterion:
the mean training loss of the last ``WINDOW`` steps is at most ``(1 - fraction)`` times the mean of the
first ``WINDOW`` (``fraction`` per method below, about half the drop measured at the default rate on CPU,
seed 0); LeADER is judged within each of its two stages (the loss changes meaning between them).

Self-distillation (``against_2e6``, Coda): the target of a DINO-type loss moves (the centre, the EMA
teacher, the teacher temperature), and in the first steps the loss rises towards ``log(out_dim)`` whatever
the rate. There the criterion compares the last ``WINDOW`` steps of the default run with the same run (same
seed, views and masks) at 2e-6: the student that learns ends at least ``fraction`` below the one that
barely moves. :data:`NOT_YET` lists the bundles this file does not cover yet, with what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from ignite.engine import Events
from monai.bundle import ConfigParser

from common.evaluation.bundle_runs import bundle_dir, workflow

pytestmark = pytest.mark.slow

WINDOW = 4
SIZE_KEYS = frozenset(
    {
        "feature_size",
        "pixdim",
        "global_size",
        "local_size",
        "num_local",
        "roi_size",
        "image_size",
        "patch_size",
        "out_dim",
        "head_hidden_dim",
        "bottleneck_dim",
        "mlp_hidden_dim",
        "projection_dim",
        "projection_hidden_dim",
        "decoder_dim",
        "decoder_depth",
        "decoder_num_heads",
        "encoder_config",
        "disease_teacher",
        "anatomy_teacher",
        "num_workers",
    }
)


@dataclass(frozen=True)
class Case:
    """``steps`` optimiser steps at ``batch`` (``None``: the default batch); the loss must fall by
    ``fraction`` (last ``WINDOW`` steps against the first, or against the 2e-6 run's last ones)."""

    fraction: float
    steps: int = 16
    batch: int | None = None
    against_2e6: bool = False


CASES = {  # measured drops (CPU, seed 0) in the comments
    "mae_ssl_pretrain": Case(0.015, batch=1),  # 0.032; at 2e-6: -0.002 (with 32³ mask cells; passes with 16³)
    "simmim_ssl_pretrain": Case(0.15, batch=1),  # 0.33; at 2e-6: -0.027
    "coda_pretrain": Case(0.06, steps=32, batch=16, against_2e6=True),  # 0.15 (last 4 steps vs the 2e-6 run)
    "leader_pretrain": Case(0.06, steps=32),  # stage 1: 0.259, stage 2: 0.131
}

# Not covered yet (issue 17 item 1 is open for these): what the CPU runs above measured instead.
NOT_YET = {
    "dino_ssl_pretrain": "16 steps at batch 1: the loss rises 4.85 -> 5.61 (log 256 = 5.55) at the default "
    "rate and at 2e-6 alike (last 4 steps 5.60 against 5.61); needs a longer run or a criterion on "
    "KL(teacher||student)",
    "ibot_ssl_pretrain": "not measured; its DINO-type [CLS] term behaves as DINO's",
    "smit_ssl_pretrain": "not measured; its DINO-type terms behave as DINO's",
    "mocov3_ssl_pretrain": "16 steps at batch 2: InfoNCE with one negative is noise (0.29-1.6), no trend; "
    "needs the default batch 4, too slow for the CPU suite",
    "simclr_ssl_pretrain": "not measured; a contrastive loss at a CPU-sized batch, as MoCo v3",
    "swinunetr_ssl_pretrain": "not measured; its contrastive term at a CPU-sized batch, as MoCo v3",
    "rotation_ssl_pretrain": "16 steps at batch 1: first 4 steps 1.54, last 4 1.39 (drop 0.095), i.e. down "
    "to chance (log 4 = 1.386), not below it; the 2e-6 control was not measured",
    "genesis_ssl_pretrain": "16 steps at batch 1: the per-volume restoration loss is noise (0.02-0.14)",
}


def default_learning_rate(bundle: str) -> float:
    """``learning_rate`` as the bundle's ``train.json`` computes it at its default batch."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "train.json"))
    return float(parser.get_parsed_content("learning_rate"))


def run_overrides(bundle: str, case: Case) -> dict:
    """The overrides of one run: sizes from ``smoke.json``, the compressed schedule, the batch."""
    configs = bundle_dir(bundle) / "configs"
    train = ConfigParser.load_config_file(str(configs / "train.json"))
    smoke = ConfigParser.load_config_file(str(configs / "smoke.json"))
    overrides = {key: value for key, value in smoke.items() if key in SIZE_KEYS}
    scale = case.steps / train["max_epochs"]
    overrides.update(
        {
            key: value * scale
            for key, value in train.items()
            if (key.endswith("_epochs") and key != "max_epochs" or key == "freeze_last_layer")
            and isinstance(value, (int, float))
        }
    )
    overrides.update(max_epochs=case.steps, epoch_length=1, save_interval=case.steps)
    if case.batch is not None:
        overrides.update(batch_size=case.batch, learning_rate=default_learning_rate(bundle))
    return overrides


def training_losses(bundle: str, case: Case, work_dir, **extra) -> list[float]:
    """The total loss of every step of ``bundle``'s training under :func:`run_overrides` and ``extra``."""
    flow = workflow(bundle, ["train.json"], "training", work_dir, **{**run_overrides(bundle, case), **extra})
    losses: list[float] = []
    trainer = flow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output[0]["loss"]))
    )
    flow.run()
    flow.finalize()
    assert len(losses) == case.steps
    return losses


def relative_drop(losses: list[float]) -> float:
    """``1 - mean(last WINDOW) / mean(first WINDOW)``."""
    return 1.0 - float(np.mean(losses[-WINDOW:]) / np.mean(losses[:WINDOW]))


def drops(bundle: str, losses: list[float]) -> list[float]:
    """The relative drop of the run, or of each LeADER stage (its first ``stage1_epochs`` steps, then the
    rest)."""
    if bundle != "leader_pretrain":
        return [relative_drop(losses)]
    half = len(losses) // 2  # stage1_epochs is half of max_epochs by default (asserted below)
    return [relative_drop(losses[:half]), relative_drop(losses[half:])]


def test_leader_stage_one_is_half_the_run():
    train = ConfigParser.load_config_file(str(bundle_dir("leader_pretrain") / "configs" / "train.json"))
    assert train["stage1_epochs"] * 2 == train["max_epochs"]


def test_the_ten_3d_methods_share_one_budget_and_rate_rule():
    budgets, rules = set(), set()
    for bundle in [*CASES, *NOT_YET]:
        if bundle in ("coda_pretrain", "leader_pretrain"):
            continue
        train = ConfigParser.load_config_file(str(bundle_dir(bundle) / "configs" / "train.json"))
        budgets.add((train["max_epochs"], train["epoch_length"], train["warmup_epochs"]))
        rules.add((train["learning_rate"], train["base_learning_rate"], train["reference_batch"]))
    assert budgets == {(100, 100, 10)}
    assert rules == {("$@base_learning_rate * (@batch_size / @reference_batch) ** 0.5", 4e-4, 4)}


@pytest.mark.parametrize(
    "bundle",
    sorted(CASES)
    + [pytest.param(b, marks=pytest.mark.skip(reason=why)) for b, why in sorted(NOT_YET.items())],
)
def test_loss_falls_at_the_default_learning_rate(bundle, prepared_data, tmp_path):
    case = CASES[bundle]
    losses = training_losses(bundle, case, tmp_path / "default")
    assert all(np.isfinite(losses)), losses
    if case.against_2e6:
        control = training_losses(bundle, case, tmp_path / "control", learning_rate=2e-6)
        found = [1.0 - float(np.mean(losses[-WINDOW:]) / np.mean(control[-WINDOW:]))]
    else:
        found = drops(bundle, losses)
    for drop in found:
        assert drop >= case.fraction, f"{bundle}: loss fell by {drop:.3f} < {case.fraction} ({losses})"


@pytest.mark.parametrize("bundle", ["mae_ssl_pretrain", "simmim_ssl_pretrain"])
def test_a_learning_rate_of_2e6_does_not_train(bundle, prepared_data, tmp_path):
    case = CASES[bundle]
    losses = training_losses(bundle, case, tmp_path, learning_rate=2e-6)
    assert max(drops(bundle, losses)) < case.fraction, losses
