"""Ignite handlers used by the bundles' train and evaluate configs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as _IgniteProgressBar
from monai.engines import IterationEvents
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import from_engine

from ..networks.pretrained import EncoderLoadError


def is_rank0() -> bool:
    """True outside distributed runs and on rank 0 of a distributed one."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ProgressBar:
    """A tqdm progress bar over an engine's iterations, showing the loss when the output has one.

    Written as a MONAI-style handler (``attach(engine)``) so it can be listed in a config's handlers.
    Silent on ranks other than 0.
    """

    def __init__(self, output_key: str | None = "loss", persist: bool = False) -> None:
        self.output_key = output_key
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        if not is_rank0():
            return
        transform = self._loss_of if self.output_key else None
        _IgniteProgressBar(persist=self.persist).attach(engine, output_transform=transform)

    def _loss_of(self, output) -> dict[str, float]:
        return {self.output_key: float(from_engine([self.output_key], first=True)(output))}


class AnnotatedClassesHandler:
    """Give a partial-label loss each batch's annotated classes before the iteration computes it.

    MONAI's ``SupervisedTrainer`` calls ``loss(pred, label)``; this handler sets ``loss.annotated`` from
    ``engine.state.batch[key]`` (written by :class:`common.transforms.AnnotatedClassesd`) at every
    ``ITERATION_STARTED``, so :class:`common.losses.PartialLabelDiceCELoss` ignores, per sample, the classes
    its source does not annotate (SuPreM, Li et al., ICLR 2024).
    """

    def __init__(self, loss, key: str = "annotated") -> None:
        self.loss, self.key = loss, key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        if self.key not in batch:
            raise KeyError(
                f"the batch has no {self.key!r} entry (keys: {sorted(batch)}); add AnnotatedClassesd"
            )
        self.loss.annotated = batch[self.key]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration and the loss terms."""


class NonFiniteLossGuard:
    """Stop training at the first NaN or infinite loss, before that iteration's backward pass and step.

    Runs at MONAI's ``IterationEvents.LOSS_COMPLETED``, which ``SupervisedTrainer`` and
    :class:`~common.engines.SSLTrainer` fire once the loss is computed and before back-propagating it, and
    raises :class:`NonFiniteLossError` naming the iteration, the epoch and every scalar entry of the
    iteration's output (``loss`` and, for a self-supervised method, each named loss term). As no gradient of
    the bad loss reaches the weights, the network and the optimiser keep the state of the last finite
    iteration: checkpoints already written are left as they are, and one that a ``CheckpointSaver`` writes
    on the exception (``save_final``) holds that last good state, not NaN weights.

    ``SSLTrainer`` attaches one itself; supervised train configs list it in their ``train#handlers``.
    """

    def __init__(self, loss_key: str = "loss") -> None:
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        terms = output[0] if isinstance(output, list | tuple) else output
        if not isinstance(terms, Mapping) or self.loss_key not in terms:
            raise KeyError(f"the iteration output has no {self.loss_key!r} entry to check")
        if torch.isfinite(torch.as_tensor(terms[self.loss_key])).all():
            return
        values = ", ".join(
            f"{name}={float(torch.as_tensor(value).detach()):.4g}"
            for name, value in terms.items()
            if isinstance(value, float | int) or (isinstance(value, torch.Tensor) and value.numel() == 1)
        )
        raise NonFiniteLossError(
            f"non-finite loss at iteration {engine.state.iteration} (epoch {engine.state.epoch}): {values}; "
            "training stopped before this step's backward pass and optimiser step, so the weights keep the "
            "last finite iteration's state"
        )


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` (which reads with ``torch.load(..., weights_only=True)``) whose errors
    name the checkpoint file.

    An absent, truncated or non-PyTorch file, and a checkpoint of another network (torch lists the missing
    and unexpected keys), raise :class:`~common.networks.EncoderLoadError` ``"<path>: cannot load the
    checkpoint (<torch's error>)"``; MONAI's own message does not say which file failed.
    """

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except Exception as err:  # torch raises several types for absent, truncated or foreign files
            raise EncoderLoadError(
                f"{self.load_path}: cannot load the checkpoint ({type(err).__name__}: {err})"
            ) from err
