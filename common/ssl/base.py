"""What every self-supervised method of the collection is: an ``nn.Module`` that owns its networks and
returns a dict of named losses for a batch of views.

The generic trainer (:class:`common.engines.SSLTrainer`) back-propagates ``losses["loss"]`` and logs every
entry; the shared handlers set the scheduled attributes (``momentum``, ``teacher_temp``), update the EMA
teachers listed by :meth:`SSLMethod.teacher_pairs`, and export :meth:`SSLMethod.export_encoder`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from torch import nn

from .ema import ema_update_


class SSLMethod(nn.Module, ABC):
    """Base class of the methods in ``common.ssl``.

    Subclasses set ``self.encoder`` (the student :class:`~common.networks.SwinEncoder`), optionally
    ``self.teacher_encoder`` (its EMA copy, exported instead of the student when present), and implement
    :meth:`forward`. ``momentum`` and ``teacher_temp`` are plain attributes the schedule handler sets.
    """

    momentum: float = 0.996
    teacher_temp: float = 0.04

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(teacher, student)`` module pairs updated by EMA after each step; none by default."""
        return []

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA update of every teacher with the current ``momentum``."""
        for teacher, student in self.teacher_pairs():
            ema_update_(teacher, student, self.momentum)

    def export_encoder(self) -> nn.Module:
        """The encoder written to the encoder file: the EMA teacher's where there is one (DINO and iBOT
        evaluate the teacher; SMIT's code saves the student, the collection exports the teacher for every
        self-distillation method alike), otherwise the student's."""
        teacher = getattr(self, "teacher_encoder", None)
        return teacher if teacher is not None else self.encoder

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses for ``batch`` (views named ``global_i`` / ``local_i``); ``"loss"`` is the total."""


def views(batch: dict[str, torch.Tensor], kind: str) -> list[torch.Tensor]:
    """The ``kind`` views of a batch (``"global"`` or ``"local"``) in index order."""
    names = sorted((k for k in batch if k.startswith(f"{kind}_")), key=lambda k: int(k.split("_")[1]))
    return [batch[k] for k in names]


def unwrap(module: nn.Module) -> nn.Module:
    """The method inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student``, the starting point of an EMA teacher."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def kl_part(loss: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """``loss - criterion.teacher_entropy``, detached: the KL(P_t || P_s) part of a DINO-type cross-entropy
    just computed by ``criterion`` (DINO, Sec. 5.3, Fig. 7: the part that falls while the student learns,
    whereas the cross-entropy follows the targets' entropy)."""
    return (loss - criterion.teacher_entropy).detach()
