"""Handlers shared by every self-supervised method (attach to :class:`~common.engines.SSLTrainer`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ignite.engine import Engine, Events

from ..networks.pretrained import save_encoder
from ..ssl.base import unwrap
from ..ssl.schedules import cosine, linear_warmup, warmup_cosine
from .handlers import is_rank0


class SSLScheduleHandler:
    """Per-iteration schedules (DINO, Caron et al. 2021, implementation details), set before each step:

    - ``lr``: linear warm-up over ``warmup_epochs`` to ``base_lr``, then cosine to ``final_lr``;
    - ``weight_decay``: cosine from ``weight_decay[0]`` to ``weight_decay[1]`` (parameter groups created
      with weight decay 0, biases and norms, stay at 0);
    - ``momentum`` (EMA teacher): cosine from ``momentum[0]`` to ``momentum[1]``;
    - ``teacher_temp``: linear from ``teacher_temp[0]`` to ``teacher_temp[1]`` over
      ``teacher_temp_warmup_epochs``, then constant.

    Values are set on the optimiser and on the method (``engine.network``, unwrapped from DDP); each one
    is also stored in ``engine.state.schedule`` for logging.
    """

    def __init__(
        self,
        base_lr: float,
        final_lr: float = 1e-6,
        warmup_epochs: float = 0,
        weight_decay: Sequence[float] | None = None,
        momentum: Sequence[float] | None = None,
        teacher_temp: Sequence[float] | None = None,
        teacher_temp_warmup_epochs: float = 0,
    ) -> None:
        self.base_lr, self.final_lr, self.warmup_epochs = base_lr, final_lr, warmup_epochs
        self.weight_decay, self.momentum = weight_decay, momentum
        self.teacher_temp, self.teacher_temp_warmup_epochs = teacher_temp, teacher_temp_warmup_epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def values(self, step: int, epoch_length: int, max_epochs: int) -> dict[str, float]:
        """The scheduled values at 0-based iteration ``step``."""
        total = epoch_length * max_epochs
        out = {
            "lr": warmup_cosine(
                self.base_lr, self.final_lr, step, total, round(self.warmup_epochs * epoch_length)
            )
        }
        if self.weight_decay is not None:
            out["weight_decay"] = cosine(self.weight_decay[0], self.weight_decay[1], step, total)
        if self.momentum is not None:
            out["momentum"] = cosine(self.momentum[0], self.momentum[1], step, total)
        if self.teacher_temp is not None:
            warmup = round(self.teacher_temp_warmup_epochs * epoch_length)
            out["teacher_temp"] = linear_warmup(self.teacher_temp[0], self.teacher_temp[1], step, warmup)
        return out

    def __call__(self, engine: Engine) -> None:
        values = self.values(engine.state.iteration - 1, engine.state.epoch_length, engine.state.max_epochs)
        for group in engine.optimizer.param_groups:
            group["lr"] = values["lr"] * group.get("lr_scale", 1.0)
            if "weight_decay" in values and group.get("weight_decay", 0.0) > 0.0:
                group["weight_decay"] = values["weight_decay"]
        method = unwrap(engine.network)
        for name in ("momentum", "teacher_temp"):
            if name in values:
                setattr(method, name, values[name])
        engine.state.schedule = values


class EMATeacherHandler:
    """After each optimiser step, the method's EMA teachers move towards their students
    (``SSLMethod.update_teacher``, with the momentum the schedule set)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        unwrap(engine.network).update_teacher()


class EncoderExportHandler:
    """Writes the method's encoder (``SSLMethod.export_encoder``) to ``path`` as an encoder file, every
    ``interval`` epochs and when training completes; rank 0 only, atomically
    (:func:`common.networks.save_encoder`: a failed or interrupted write leaves the previous file intact)."""

    def __init__(self, path: str | os.PathLike, interval: int = 1, **meta) -> None:
        self.path, self.interval, self.meta = path, interval, meta

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        method = unwrap(engine.network)
        save_encoder(
            method.export_encoder(),
            self.path,
            method=type(method).__name__,
            epoch=engine.state.epoch,
            iteration=engine.state.iteration,
            **self.meta,
        )


def parameter_groups(network, weight_decay: float) -> list[dict]:
    """Two groups, as in DINO's ``get_params_groups``: weights with ``weight_decay``, and biases and
    one-dimensional parameters (norms, tokens) without; frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EpochLossTermsHandler:
    """Puts each loss term's mean over the epoch, and the scheduled values at the epoch's end, into
    ``engine.state.metrics`` (``train_<term>``), where the epoch logs of ``StatsHandler`` and
    ``MLFlowHandler`` (``--tracking mlflow``) pick them up. Attach it before those handlers."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def accumulate(self, engine: Engine) -> None:
        for name, value in engine.state.output[0].items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1

    def publish(self, engine: Engine) -> None:
        for name, total in self.sums.items():
            engine.state.metrics[f"train_{name}"] = total / max(self.count, 1)
        engine.state.metrics.update(getattr(engine.state, "schedule", {}))


class LeADERStageHandler:
    """Algorithm 1 of LeADER (papers/001): the method's ``stage`` is 1 (disease branch on images) for the
    first ``stage1_epochs`` epochs and 2 (both branches on image/patch pairs) afterwards; set at the start of
    each epoch, so a resumed run continues in the right stage."""

    def __init__(self, stage1_epochs: int) -> None:
        self.stage1_epochs = stage1_epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        unwrap(engine.network).stage = 1 if engine.state.epoch <= self.stage1_epochs else 2
