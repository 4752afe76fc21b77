"""MLflow metric histories (real runs in a SQLite store), convergence curves, mean ranks, rank plot."""

import math
import sqlite3

import numpy as np
import pytest
from scipy.stats import rankdata

from common.evaluation.curves import (
    convergence_curves,
    convergence_figure,
    cross_task_rank_figure,
    cross_task_rank_plot,
    group_mean_sd,
    mean_ranks,
    moving_average,
    read_metric_histories,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (method, seed, train_loss by iteration, val_mean_dice by epoch); seed 1 of "mae" validates on another grid
RUNS = [
    ("mae", 0, {1: 1.0, 2: 2.0, 3: 3.0}, {2: 0.2, 4: 0.4}),
    ("mae", 1, {1: 3.0, 2: 4.0, 3: 5.0}, {2: 0.4, 3: 0.5}),
    ("scratch", 0, {1: 9.0, 2: 8.0, 3: 7.0}, {2: 0.1, 4: 0.3}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store (creating one costs seconds): runs logged with the MLflow client, plus one
    run written by MONAI's MLFlowHandler with its defaults."""
    import torch
    from ignite.engine import Engine, Events
    from mlflow.tracking import MlflowClient
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_sqlite_uri

    db = tmp_path_factory.mktemp("mlflow") / "mlruns.db"
    uri = path_to_sqlite_uri(db)
    client = MlflowClient(tracking_uri=uri)
    bench = client.create_experiment("seg_bench")
    for method, seed, loss, dice in RUNS:
        run_id = client.create_run(bench, run_name=f"{method}_s{seed}").info.run_id
        for key, value in {"method": method, "task": "multiorgan", "shots": 5, "seed": seed}.items():
            client.set_tag(run_id, key, value)
        client.log_param(run_id, "max_epochs", 4)
        for step in sorted(loss, reverse=True):  # logged out of step order on purpose
            client.log_metric(run_id, "train_loss", loss[step], step=step)
        for step, value in dice.items():
            client.log_metric(run_id, "val_mean_dice", value, step=step)
    other = client.create_experiment("other")
    run_id = client.create_run(other, run_name="x").info.run_id
    client.set_tag(run_id, "method", "mae")
    client.set_tag(run_id, "shots", "10")
    client.log_metric(run_id, "train_loss", 0.5, step=1)

    # MONAI's handler, defaults but for the store and experiment: per-iteration "Loss" and "lr_group_0"
    # at step = iteration, engine.state.metrics at step = epoch, params max_epochs and epoch_length.
    def step_fn(engine, batch):
        return [float(10 * engine.state.epoch + batch)]  # default output_transform takes output[0]

    trainer = Engine(step_fn)
    trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = 0.1 * engine.state.epoch

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        MLFlowHandler(tracking_uri=uri, experiment_name="monai_handler", close_on_complete=True).attach(
            trainer
        )
        trainer.run([0, 1, 2], max_epochs=2)
    return uri


def test_read_histories_step_order_tags_params(store):
    runs = read_metric_histories(store, ["seg_bench"])
    assert [r["run_name"] for r in runs] == ["mae_s0", "mae_s1", "scratch_s0"]  # by start time
    for run, (method, seed, loss, dice) in zip(runs, RUNS, strict=True):
        assert run["histories"]["train_loss"] == sorted(loss.items())
        assert run["histories"]["val_mean_dice"] == sorted(dice.items())  # float64 round trip
        assert run["tags"]["method"] == method and run["tags"]["seed"] == str(seed)
        assert run["params"] == {"max_epochs": "4"}
        assert run["experiment_name"] == "seg_bench" and len(run["run_id"]) == 32
    # metrics=None reads what each run has; an absent metric reads as an empty history
    assert set(read_metric_histories(store, "seg_bench", metrics=None)[0]["histories"]) == {
        "train_loss",
        "val_mean_dice",
    }
    assert read_metric_histories(store, "other", metrics=["val_mean_dice"])[0]["histories"] == {
        "val_mean_dice": []
    }
    # a path to the database file is accepted too
    assert len(read_metric_histories(store.replace("sqlite:///", "").replace("%20", " "), "seg_bench")) == 3


def test_read_histories_tags_filter_and_all_experiments(store):
    mae = read_metric_histories(store, "seg_bench", tags_filter={"method": "mae"})
    assert [r["run_name"] for r in mae] == ["mae_s0", "mae_s1"]
    assert [r["run_name"] for r in read_metric_histories(store, "seg_bench", tags_filter={"seed": 0})] == [
        "mae_s0",
        "scratch_s0",
    ]
    assert len(read_metric_histories(store, "seg_bench", tags_filter={"method": ["mae", "scratch"]})) == 3
    assert read_metric_histories(store, "seg_bench", tags_filter={"method": "mae", "shots": 10}) == []
    assert read_metric_histories(store, "seg_bench", tags_filter={"nonexistent_tag": "x"}) == []
    everywhere = read_metric_histories(store, tags_filter={"method": "mae"})  # all experiments
    assert sorted(r["experiment_name"] for r in everywhere) == ["other", "seg_bench", "seg_bench"]


def test_read_histories_errors_name_the_store(store, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown MLflow experiment.*'nope'.*monai_handler.*other.*seg_bench"
    ):
        read_metric_histories(store, ["seg_bench", "nope"])
    missing = f"sqlite:///{tmp_path}/absent/mlruns.db"
    with pytest.raises(FileNotFoundError, match="absent/mlruns.db"):
        read_metric_histories(missing)
    assert not (tmp_path / "absent").exists()  # MLflow was not allowed to create it
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        read_metric_histories(str(tmp_path / "no_such_folder"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="junk.db.*not a readable SQLite"):
        read_metric_histories(f"sqlite:///{junk}")
    other_db = tmp_path / "other.db"
    sqlite3.connect(other_db).execute("create table t (x)").connection.close()
    with pytest.raises(ValueError, match="other.db.*not an MLflow database"):
        read_metric_histories(f"sqlite:///{other_db}")


def test_reads_monai_mlflow_handler_defaults(store):
    """MONAI's MLFlowHandler: per-iteration scalar under tag "Loss" (bundles set tag_name="train_loss"),
    lr as "lr_group_0", both at step = global iteration; engine.state.metrics at step = epoch."""
    (run,) = read_metric_histories(store, "monai_handler", metrics=["Loss", "lr_group_0", "val_mean_dice"])
    h = run["histories"]
    assert h["Loss"] == [(1, 10.0), (2, 11.0), (3, 12.0), (4, 20.0), (5, 21.0), (6, 22.0)]
    assert h["lr_group_0"] == [(i, pytest.approx(0.1)) for i in range(1, 7)]
    assert h["val_mean_dice"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert run["params"] == {"max_epochs": "2", "epoch_length": "3"}
    assert run["run_name"].startswith("run_")


def _hist(method, seed, values, steps=None, metric="train_loss"):
    steps = range(1, len(values) + 1) if steps is None else steps
    return {
        "run_id": f"{method}{seed}",
        "run_name": f"{method}_s{seed}",
        "tags": {"method": method, "seed": str(seed)},
        "params": {},
        "histories": {metric: list(zip(steps, values, strict=True))},
    }


def test_group_mean_sd_by_hand():
    groups = group_mean_sd([_hist("a", 0, [1, 2, 3]), _hist("a", 1, [3, 4, 5])], "method", "train_loss")
    steps, mean, sd = groups["a"]
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_allclose(mean, [2, 3, 4])
    np.testing.assert_allclose(sd, [math.sqrt(2)] * 3)  # sample sd of {1, 3}: 1.414...


def test_group_mean_sd_union_of_step_grids():
    runs = [
        _hist("a", 0, [1, 2, 3], steps=[1, 2, 3]),
        _hist("a", 1, [5, 8], steps=[2, 4]),
        _hist("b", 0, [7]),
    ]
    groups = group_mean_sd(runs, "method", "train_loss")
    assert list(groups) == ["a", "b"]
    steps, mean, sd = groups["a"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    np.testing.assert_allclose(mean, [1, 3.5, 3, 8])  # a run contributes where it has a value
    np.testing.assert_allclose(sd[1], np.std([2, 5], ddof=1))
    assert np.isnan(sd[[0, 2, 3]]).all()  # one run only: no sd
    np.testing.assert_allclose(groups["b"][1], [7])
    # group by several keys or a callable; a run without the key is an error naming it
    assert list(group_mean_sd(runs, ["method", "seed"], "train_loss")) == ["a, 0", "a, 1", "b, 0"]
    assert list(group_mean_sd(runs, lambda r: r["run_name"][-2:], "train_loss")) == ["s0", "s1"]
    with pytest.raises(ValueError, match="a_s0.*no tag or param 'shots'"):
        group_mean_sd(runs, "shots", "train_loss")


def test_moving_average():
    np.testing.assert_allclose(moving_average([0, 3, 6, 3], 3), [1.5, 3, 4, 4.5])
    np.testing.assert_allclose(moving_average([0, 3, 6, 3], 2), [1.5, 4.5, 4.5, 3])
    np.testing.assert_array_equal(moving_average([1, 5, 2], 0), [1, 5, 2])
    np.testing.assert_allclose(moving_average([2.0] * 7, 4), [2.0] * 7)


def test_convergence_curves_plot_the_group_means(store, tmp_path):
    runs = read_metric_histories(store, "seg_bench")
    for smooth in (0, 2):
        fig = convergence_figure(runs, "method", smooth=smooth)
        for ax, metric in zip(fig.axes, ["train_loss", "val_mean_dice"], strict=True):
            expected = group_mean_sd(runs, "method", metric, smooth=smooth)
            assert [line.get_label() for line in ax.lines] == ["mae (n=2)", "scratch (n=1)"]
            for line, (steps, mean, _) in zip(ax.lines, expected.values(), strict=True):
                np.testing.assert_array_equal(line.get_xdata(), steps)
                np.testing.assert_allclose(line.get_ydata(), mean)
        assert [ax.get_xlabel() for ax in fig.axes] == ["iteration", "epoch"]
        assert len(fig.axes[0].collections) == 1  # sd band for "mae" (2 seeds) only
    np.testing.assert_allclose(convergence_figure(runs).axes[0].lines[0].get_ydata(), [2, 3, 4])
    per_metric = convergence_figure(runs, smooth={"train_loss": 3})  # validation points left as logged
    np.testing.assert_allclose(per_metric.axes[0].lines[0].get_ydata(), [2.5, 3, 3.5])
    np.testing.assert_allclose(per_metric.axes[1].lines[0].get_ydata(), [0.3, 0.5, 0.4])

    out = convergence_curves(
        runs, "method", tmp_path / "figs" / "convergence.png", title="multiorgan, 5 shots"
    )
    assert out == tmp_path / "figs" / "convergence.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["convergence.png"]  # no temporary left behind
    with pytest.raises(
        ValueError, match=r"'val_dice'.*metrics with values: \['train_loss', 'val_mean_dice'\]"
    ):
        convergence_curves(runs, path=tmp_path / "bad.png", metrics=["val_dice"])
    with pytest.raises(TypeError, match="path"):
        convergence_curves(runs)
    assert not (tmp_path / "bad.png").exists()


def test_mean_ranks_by_hand_with_tie():
    scores = {
        "t1": {"a": 0.9, "b": 0.8, "c": 0.8},  # ranks a 1, b 2.5, c 2.5 (tie)
        "t2": {"a": 0.5, "b": 0.7, "c": 0.6},  # ranks a 3, b 1, c 2
    }
    assert mean_ranks(scores) == {"a": 2.0, "b": 1.75, "c": 2.25}
    assert mean_ranks(scores, higher_is_better=False) == {"a": 2.0, "b": 2.25, "c": 1.75}
    rng = np.random.default_rng(0)
    encoders = [f"e{i}" for i in range(6)]
    many = {f"t{t}": dict(zip(encoders, rng.integers(0, 4, 6).astype(float), strict=True)) for t in range(5)}
    expected = np.mean([rankdata([-many[t][e] for e in encoders], method="average") for t in many], axis=0)
    np.testing.assert_allclose([mean_ranks(many)[e] for e in encoders], expected)


def test_mean_ranks_errors():
    with pytest.raises(ValueError, match=r"task 't2'.*encoder\(s\) \['c'\]"):
        mean_ranks({"t1": {"a": 1, "b": 2, "c": 3}, "t2": {"a": 1, "b": 2}})
    with pytest.raises(ValueError, match=r"task 't1'.*non-finite.*\['b'\]"):
        mean_ranks({"t1": {"a": 1, "b": float("nan")}})
    with pytest.raises(ValueError, match="no tasks"):
        mean_ranks({})


def test_cross_task_rank_plot(tmp_path):
    seg = {
        "organs": {"dinov2": 0.8, "mae": 0.7, "scratch": 0.6},
        "tumour": {"dinov2": 0.5, "mae": 0.6, "scratch": 0.4},
    }
    cls = {"nodule": {"dinov2": 0.9, "mae": 0.7, "scratch": 0.8}}
    fig = cross_task_rank_figure(seg, cls)
    ax = fig.axes[0]
    points = {text.get_text(): text.xy for text in ax.texts}
    assert points == {"dinov2": (1.5, 1.0), "mae": (1.5, 3.0), "scratch": (3.0, 2.0)}
    assert ax.get_xlim()[0] > ax.get_xlim()[1] and ax.get_ylim()[0] > ax.get_ylim()[1]  # rank 1 right / up
    out = cross_task_rank_plot(seg, cls, tmp_path / "ranks.png", title="encoders")
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"only segmentation \['scratch'\]"):
        cross_task_rank_plot(seg, {"nodule": {"dinov2": 0.9, "mae": 0.7}}, tmp_path / "x.png")
