"""The generic SSL engine: schedules, EMA, the trainer's step and guard, and the shared handlers."""

import math

import pytest
import torch
from ignite.engine import Events
from torch import nn

from common.engines import (
    EMATeacherHandler,
    EncoderExportHandler,
    EpochLossTermsHandler,
    NonFiniteLossError,
    SSLScheduleHandler,
    SSLTrainer,
    parameter_groups,
)
from common.networks import load_encoder
from common.ssl import SSLMethod, ema_update_, make_teacher
from common.ssl.schedules import cosine, linear_warmup, warmup_cosine


def test_cosine_schedule_formula_and_end_points():
    assert cosine(1.0, 0.0, 0, 10) == 1.0 and cosine(1.0, 0.0, 10, 10) == 0.0
    assert cosine(1.0, 0.0, 5, 10) == pytest.approx(0.5)
    step, total, a, b = 3, 8, 0.996, 1.0
    assert cosine(a, b, step, total) == pytest.approx(b + (a - b) * 0.5 * (1 + math.cos(math.pi * 3 / 8)))


def test_warmup_then_cosine_and_linear_warmup():
    assert [warmup_cosine(1.0, 0.0, s, 10, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warmup_cosine(1.0, 0.0, 4, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 0.0, 10, 10, 4) == pytest.approx(0.0)
    assert linear_warmup(0.04, 0.07, 0, 30) == pytest.approx(0.04)
    assert linear_warmup(0.04, 0.07, 15, 30) == pytest.approx(0.055)
    assert linear_warmup(0.04, 0.07, 40, 30) == pytest.approx(0.07)


def test_ema_update_follows_its_formula_and_copies_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(5, 3))  # moves the batch-norm running statistics
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.9)
    for name, p in student.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        assert torch.allclose(dict(teacher.named_parameters())[name], expected, atol=1e-7)
        assert not dict(teacher.named_parameters())[name].requires_grad
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_parameter_groups_exclude_biases_and_norms_from_weight_decay():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    decay, no_decay = parameter_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3


class _Toy(SSLMethod):
    """A one-parameter method with an EMA teacher: loss = (w * x).mean() ** 2 (or NaN on request)."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.encoder = nn.Linear(1, 1, bias=False)
        self.teacher_encoder = make_teacher(self.encoder)
        self.nan_at, self.calls = nan_at, 0

    def teacher_pairs(self):
        return [(self.teacher_encoder, self.encoder)]

    def forward(self, batch):
        self.calls += 1
        value = self.encoder(batch["global_0"]).mean() ** 2
        if self.calls == self.nan_at:
            value = value * float("nan")
        return {"loss": value, "square": value.detach(), "half": value.detach() / 2}


def _trainer(method, handlers, epochs=2, length=3):
    data = [{"global_0": torch.full((2, 1), float(i + 1))} for i in range(length)]
    optimizer = torch.optim.SGD(parameter_groups(method, 0.1), lr=0.1)
    return SSLTrainer("cpu", epochs, data, method, optimizer, train_handlers=handlers)


def test_trainer_steps_schedules_ema_and_epoch_terms():
    method = _Toy()
    schedule = SSLScheduleHandler(base_lr=0.1, final_lr=0.0, warmup_epochs=1, momentum=[0.5, 1.0])
    seen = []
    trainer = _trainer(method, [schedule, EMATeacherHandler(), EpochLossTermsHandler()])
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.schedule)))
    w0 = method.encoder.weight.item()
    trainer.run()
    assert method.encoder.weight.item() != w0
    assert [s["lr"] for s in seen[:3]] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert seen[0]["momentum"] == pytest.approx(0.5) and seen[-1]["momentum"] < 1.0
    assert method.momentum == pytest.approx(seen[-1]["momentum"])
    assert method.teacher_encoder.weight.item() != w0  # moved by EMA, not by gradient
    assert method.teacher_encoder.weight.grad is None
    metrics = trainer.state.metrics
    assert metrics["train_half"] == pytest.approx(metrics["train_square"] / 2)
    assert set(trainer.state.output[0]) == {"loss", "square", "half"}


def test_non_finite_loss_stops_training_naming_iteration_and_terms():
    trainer = _trainer(_Toy(nan_at=2), [])
    with pytest.raises(NonFiniteLossError, match=r"iteration 2 .*loss=nan.*square=nan"):
        trainer.run()


def test_encoder_export_handler_writes_the_teacher_as_an_encoder_file(tmp_path):
    method = _Toy()
    path = tmp_path / "encoder.pt"
    _trainer(method, [EMATeacherHandler(), EncoderExportHandler(path, feature_size=1)], epochs=1).run()
    fresh = nn.Linear(1, 1, bias=False)
    meta = load_encoder(fresh, path)
    assert torch.equal(fresh.weight, method.teacher_encoder.weight)
    assert meta["method"] == "_Toy" and meta["feature_size"] == 1 and meta["epoch"] == 1
