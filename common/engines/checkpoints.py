"""Checkpoints that survive a kill, and training that resumes from them bit for bit.

:class:`CheckpointSaver` writes every file atomically; :class:`EpochReseedHandler` makes each epoch's random
draws a function of the seed and the epoch number alone. With both, a run killed at any moment and resumed
with ``--resume_from <ckpt_dir>/checkpoint_epoch=<k>.pt`` (the configs' ``common.engines.CheckpointLoader``
restores the network, the optimiser, the learning-rate scheduler and the trainer's iteration) ends with the
same weights as the uninterrupted run (CPU, fp32; ``tests/test_resume.py`` checks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver
from monai.utils import set_determinism

from ..atomic import atomic_torch_save
from .handlers import is_rank0


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing through :func:`common.atomic.atomic_torch_save`, to a fixed file name
    when one is given, on rank 0 only, and deleting a superseded file only after its successor is written.

    ignite's ``Checkpoint`` calls ``remove(old)`` *before* saving the new file; here ``remove`` only records
    the name, and the file goes once the next save has succeeded (a file of the same name is replaced by the
    rename itself)."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        target = self.filename or filename
        if is_rank0():
            atomic_torch_save(checkpoint, self.dirname / target)
            for old in self._superseded:
                if old != target:
                    (self.dirname / old).unlink(missing_ok=True)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class CheckpointSaver(_MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, same file names) whose writes cannot leave a broken or
    missing checkpoint behind.

    MONAI 1.6 writes with ignite's ``DiskSaver(atomic=False)`` straight into the target file, and when a file
    is superseded (the single interval checkpoint of ``n_saved=1``, the fixed-name best-metric or final
    checkpoint) it deletes the old file *before* writing the new one: a process killed in between leaves no
    checkpoint, or a truncated one. This saver

    - writes each file to a temporary file in ``save_dir`` and renames it over the target
      (:func:`common.atomic.atomic_path`; a failed write removes the temporary file and leaves the previous
      checkpoint byte for byte as it was);
    - deletes a superseded file (``checkpoint_epoch=9.pt`` once ``checkpoint_epoch=10.pt`` exists) only after
      the new one is in place, so at every moment at least one complete checkpoint exists;
    - writes on rank 0 only (the ranks of a ``DistributedDataParallel`` run hold the same weights);
    - has a ``state_dict`` (the best-metric saver's ``(score, file)`` record, which MONAI's
      ``load_state_dict`` restores): listed in a trainer checkpoint's ``save_dict`` and ``load_dict``, it lets
      a resumed run keep ``model.pt`` as the best model so far instead of overwriting it with the first
      validation after the resume.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        fixed_names = (
            (self._final_checkpoint, kwargs.get("final_filename")),
            (self._key_metric_checkpoint, kwargs.get("key_metric_filename")),
            (self._interval_checkpoint, None),
        )
        for checkpoint, filename in fixed_names:
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        """The best-metric saver's record (empty without ``save_key_metric``)."""
        return {} if self._key_metric_checkpoint is None else dict(self._key_metric_checkpoint.state_dict())


class EpochReseedHandler:
    """At the start of every epoch, re-seed all the randomness of training from ``(seed, epoch, rank)``.

    Why: the random draws of an epoch (the sampler's shuffle, the DataLoader's worker seeds, the random crops
    and intensity changes of MONAI's ``Randomizable`` transforms, the masks and views an SSL method draws in
    its forward pass) come from generators whose state runs on through the whole training run and is not in
    a checkpoint. A run resumed at epoch ``k`` would otherwise start epoch ``k + 1`` with the generator states
    that epoch 1 had, and drift from the uninterrupted run. Everything else a continuation needs is in the
    checkpoint: the network (with an EMA teacher, its centres and other buffers), the optimiser, the
    learning-rate scheduler and the trainer's iteration, from which the SSL schedules (learning rate, weight
    decay, EMA momentum, teacher temperature) are recomputed.

    What, at ``Events.EPOCH_STARTED`` (after MONAI's ``DistributedSampler.set_epoch``):

    1. ``monai.utils.set_determinism`` with the epoch's seed (``numpy.random.SeedSequence([seed, epoch,
       rank])``, so the ranks of a distributed run draw different augmentations): torch, numpy and ``random``;
    2. ``monai.data.utils.set_rnd`` of the data loader's dataset with the same seed: the transforms' own
       ``RandomState`` when the loader runs in the main process (``num_workers=0``); worker processes, started
       afresh for each pass over the data, seed their transforms from the torch generator of step 1;
    3. ``engine.set_data(engine.state.dataloader)``: a fresh pass over the data, so that an epoch never
       continues the previous epoch's iterator (which happens whenever ``epoch_length`` differs from the
       loader's length).

    Guarantee: resuming from a checkpoint written at the end of epoch ``k`` (``checkpoint_epoch=<k>.pt`` of
    :class:`CheckpointSaver`, every ``save_interval`` epochs) replays epochs ``k + 1 ...`` exactly as the
    uninterrupted run did: on CPU in fp32, with torch's deterministic algorithms (the configs'
    ``deterministic`` key; without them the multi-threaded gradient of an indexing op such as Swin's
    relative-position-bias table is summed in a varying order, so that two uninterrupted runs already differ
    in the last bits), the final weights are equal tensor by tensor. A mid-epoch kill
    loses the iterations since the last such checkpoint; continuing exactly from an arbitrary iteration would
    need every generator's state at that iteration (including those inside worker processes), which
    epoch-boundary checkpoints make unnecessary.

    Limits: a checkpoint written mid-epoch (the ``final`` checkpoint a ``CheckpointSaver`` writes when
    training stops on an exception) resumes by running that epoch's remaining iterations on the epoch's
    freshly seeded data pass: a valid continuation, not a bit-identical one. Persistent DataLoader workers
    would keep their random state across epochs, so :meth:`attach` refuses them. AMP's loss scale is not
    checkpointed and GPU kernels need not be deterministic, so on a GPU the continuation is statistically,
    not bitwise, the same.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        loader = getattr(engine, "data_loader", None)
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
            raise ValueError(
                "EpochReseedHandler: the training DataLoader has persistent_workers=True, whose worker "
                "processes keep their random state across epochs; set persistent_workers to False"
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        """The 32-bit seed of ``epoch`` on this process's rank."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0])

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        set_determinism(seed=seed)
        loader = engine.state.dataloader
        if hasattr(loader, "dataset"):
            set_rnd(loader.dataset, seed)
        epoch_length = engine.state.epoch_length
        if not epoch_length or engine.state.iteration % epoch_length == 0:
            engine.set_data(loader)
