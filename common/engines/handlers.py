"""Ignite handlers used by the bundles' train and evaluate configs."""

from __future__ import annotations

import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as _IgniteProgressBar
from monai.handlers import from_engine


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
