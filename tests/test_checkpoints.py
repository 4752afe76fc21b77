"""Atomic writes: a write that fails half-way leaves the previous file byte for byte and no temporary
file; the checkpoint saver never deletes a checkpoint before its successor is complete; weight digests."""

from __future__ import annotations

import threading

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver
from torch import nn

from common.atomic import atomic_path, atomic_torch_save
from common.data.datalists import write_json
from common.engines import CheckpointSaver, compare_weights_digests, weights_digest, write_weights_digest
from common.networks import save_encoder


class HalfWayError(RuntimeError):
    pass


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_writer_failing_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "volume.nii.gz"
    target.write_bytes(b"old content")
    with pytest.raises(HalfWayError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")  # same folder, same extension
        tmp.write_bytes(b"new cont")  # half of the new content is on disk ...
        raise HalfWayError  # ... when the writer fails
    assert target.read_bytes() == b"old content" and _only(tmp_path) == ["volume.nii.gz"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new content")
    assert target.read_bytes() == b"new content" and _only(tmp_path) == ["volume.nii.gz"]


def test_torch_save_encoder_and_json_writers_are_atomic(tmp_path):
    unpicklable = threading.Lock()
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "ckpt.pt")
    save_encoder(nn.Linear(2, 2), tmp_path / "encoder.pt", epoch=1)
    write_json({"training": []}, tmp_path / "list.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):  # torch.save fails once it has opened its (temporary) file
        atomic_torch_save({"w": torch.zeros(3), "x": unpicklable}, tmp_path / "ckpt.pt")
    with pytest.raises(TypeError):
        save_encoder(nn.Linear(2, 2), tmp_path / "encoder.pt", epoch=2, lock=unpicklable)
    with pytest.raises(TypeError):
        write_json({"training": [unpicklable]}, tmp_path / "list.json")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class _FailingState:
    """A checkpointed object whose state cannot be pickled from epoch ``fail_at`` on."""

    def __init__(self, engine: Engine, fail_at: int) -> None:
        self.engine, self.fail_at = engine, fail_at

    def state_dict(self) -> dict:
        failing = self.engine.state.epoch >= self.fail_at
        return {"epoch": self.engine.state.epoch, "lock": threading.Lock() if failing else None}

    def load_state_dict(self, state: dict) -> None:
        pass


def _train(saver_class, folder, fail_at: int, max_epochs: int, on_epoch=None, **saver_args) -> None:
    """A one-iteration-epoch engine with ``saver_class`` attached (and ``on_epoch`` called after it)."""
    engine = Engine(lambda e, b: None)
    save_dict = {"model": nn.Linear(3, 3), "state": _FailingState(engine, fail_at)}
    saver_class(save_dir=str(folder), save_dict=save_dict, **saver_args).attach(engine)
    if on_epoch is not None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, on_epoch)
    engine.run([0], max_epochs=max_epochs)


@pytest.mark.parametrize("saver_class", [CheckpointSaver, MonaiCheckpointSaver], ids=["ours", "monai"])
def test_interval_checkpoint_is_deleted_only_once_its_successor_is_written(saver_class, tmp_path):
    """``n_saved=1``: epoch 1's checkpoint is written, epoch 2's write fails half-way."""
    written = {}

    def keep_bytes(engine):
        if engine.state.epoch == 1:
            written.update(first=(tmp_path / "checkpoint_epoch=1.pt").read_bytes())

    with pytest.raises(TypeError):
        _train(saver_class, tmp_path, 2, max_epochs=3, on_epoch=keep_bytes, save_interval=1, n_saved=1)
    if saver_class is CheckpointSaver:
        assert _only(tmp_path) == ["checkpoint_epoch=1.pt"]
        assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == written["first"]
    else:  # MONAI's saver deletes epoch 1 before it writes epoch 2: no complete checkpoint is left
        assert "checkpoint_epoch=1.pt" not in _only(tmp_path)


@pytest.mark.parametrize("saver_class", [CheckpointSaver, MonaiCheckpointSaver], ids=["ours", "monai"])
def test_fixed_name_checkpoint_survives_a_failed_rewrite(saver_class, tmp_path):
    _train(saver_class, tmp_path, fail_at=99, max_epochs=1, save_final=True, final_filename="model.pt")
    good = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(TypeError):
        _train(saver_class, tmp_path, fail_at=1, max_epochs=1, save_final=True, final_filename="model.pt")
    if saver_class is CheckpointSaver:
        assert _only(tmp_path) == ["model.pt"] and (tmp_path / "model.pt").read_bytes() == good
    else:  # MONAI writes into model.pt itself: the failed write has destroyed the good file
        assert (tmp_path / "model.pt").read_bytes() != good


def test_best_metric_record_travels_in_the_trainer_checkpoint(tmp_path):
    """A resumed run whose first validation is worse than the best so far keeps ``model.pt``."""

    def validate(score: float, record: dict | None = None) -> CheckpointSaver:
        engine = Engine(lambda e, b: None)
        net = nn.Linear(2, 2, bias=False)
        nn.init.constant_(net.weight, score)
        saver = CheckpointSaver(
            save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
            key_metric_name="dice", key_metric_filename="model.pt",
        )  # fmt: skip
        if record is not None:
            saver.load_state_dict(record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=score))
        saver.attach(engine)
        engine.run([0], max_epochs=1)
        return saver

    def best_weight() -> float:
        return float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0])

    record = validate(0.8).state_dict()
    assert [score for score, _ in record["_saved"]] == [0.8]
    validate(0.3, record)  # resumed with the record: 0.3 < 0.8 is not saved
    assert best_weight() == pytest.approx(0.8)
    validate(0.3)  # without it, the first validation after a resume would overwrite the best model
    assert best_weight() == pytest.approx(0.3)


def test_weights_digests_name_the_tensors_that_differ(tmp_path):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    b = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    b.load_state_dict(a.state_dict())
    paths = [write_weights_digest(n, tmp_path / f"net{i}_rank{{rank}}.json") for i, n in enumerate([a, b])]
    assert [p.name for p in paths] == ["net0_rank0.json", "net1_rank0.json"]
    assert compare_weights_digests(paths) == []
    assert weights_digest(a).keys() == a.state_dict().keys()
    b[1].running_mean += 1.0  # plain batch-norm statistics are rank-local under DDP: not compared
    b[1].num_batches_tracked += 1  # but a counter that went out of step is
    with torch.no_grad():
        b[0].bias[1] += 1e-7  # and so is any parameter, to the last bit
    write_weights_digest(b, paths[1])
    assert compare_weights_digests(paths) == ["0.bias", "1.num_batches_tracked"]
