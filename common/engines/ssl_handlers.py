"""Handlers shared by every self-supervised method (attach to :class:`~common.engines.SSLTrainer`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ignite.engine import Engine, Events
from monai.engines import IterationEvents

from ..networks.heads import DINOHead
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


class FreezeLastLayerHandler:
    """DINO's ``freeze_last_layer`` (Caron et al. 2021, reference code ``cancel_gradients_last_layer``;
    iBOT's code does the same): during the first ``epochs`` epochs, the gradients of the weight-normalised
    last layer of every :class:`~common.networks.heads.DINOHead` in the method are dropped (set to
    ``None``) after the backward pass and the clipping, before the optimiser step, so that the optimiser
    leaves that layer untouched (no update, no weight decay). ``epochs`` 0: never. Runs on the trainer's
    ``IterationEvents.BACKWARD_COMPLETED``; a resumed run freezes by its restored epoch."""

    def __init__(self, epochs: int = 1) -> None:
        if epochs < 0:
            raise ValueError(f"freeze_last_layer must be >= 0 epochs, got {epochs}")
        self.epochs = epochs
        self.parameters: list | None = None  # found at the first step (the trainer sets its network last)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    @staticmethod
    def last_layer_parameters(method) -> list:
        """The parameters of the last layer of every ``DINOHead`` in ``method`` (teachers' included: they
        have no gradient)."""
        heads = [m for m in unwrap(method).modules() if isinstance(m, DINOHead)]
        return [p for head in heads for p in head.last_layer.parameters()]

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch <= self.epochs:
            if self.parameters is None:
                self.parameters = self.last_layer_parameters(engine.network)
            for p in self.parameters:
                p.grad = None


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
    """Algorithm 1 of LeADER (papers/001): the method's ``stage`` is 1 (disease branch on whole images, lines
    8-14) or 2 (both branches on image/patch pairs, lines 15-27), set at the start of each epoch, so a
    resumed run continues in the right stage. By default the stages run as blocks: stage 1 for the first
    ``stage1_epochs`` epochs, stage 2 afterwards; ``alternate_rounds``: Algorithm 1's rounds repeated, odd
    epochs in stage 1 and even epochs in stage 2 (``stage1_epochs`` unused).

    ``stage1_data`` / ``stage2_data`` (given together): each stage's data source (the image-only datalist
    for stage 1, the image+patch one for stage 2), set on the trainer (``engine.set_data``) as the epoch
    starts; list it before :class:`~common.engines.EpochReseedHandler`, so that the epoch's reseed reaches
    the stage's dataset. An epoch keeps the trainer's ``epoch_length`` (Ignite restarts a shorter loader and
    stops a longer one early); a loader's sampler with ``set_epoch`` (distributed runs) gets the epoch."""

    def __init__(
        self,
        stage1_epochs: int,
        alternate_rounds: bool = False,
        stage1_data: Iterable | None = None,
        stage2_data: Iterable | None = None,
    ) -> None:
        if (stage1_data is None) != (stage2_data is None):
            raise ValueError("LeADERStageHandler: give both stage1_data and stage2_data, or neither")
        self.stage1_epochs, self.alternate_rounds = stage1_epochs, alternate_rounds
        self.data = None if stage1_data is None else {1: stage1_data, 2: stage2_data}

    def stage(self, epoch: int) -> int:
        """The stage of 1-based ``epoch``."""
        if self.alternate_rounds:
            return 1 if epoch % 2 else 2
        return 1 if epoch <= self.stage1_epochs else 2

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        stage = self.stage(engine.state.epoch)
        unwrap(engine.network).stage = stage
        if self.data is not None:
            loader = self.data[stage]
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(engine.state.epoch)
            engine.set_data(loader)
