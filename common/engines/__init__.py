"""Ignite engines and handlers shared by every bundle's workflow."""

from .checkpoints import CheckpointSaver, EpochReseedHandler
from .distributed import compare_weights_digests, rank_local_tensors, weights_digest, write_weights_digest
from .handlers import (
    AnnotatedClassesHandler,
    CheckpointLoader,
    NonFiniteLossError,
    NonFiniteLossGuard,
    ProgressBar,
    is_rank0,
)
from .ssl_handlers import (
    EMATeacherHandler,
    EncoderExportHandler,
    EpochLossTermsHandler,
    FreezeLastLayerHandler,
    LeADERStageHandler,
    SSLScheduleHandler,
    parameter_groups,
)
from .ssl_trainer import SSLTrainer

__all__ = [
    "AnnotatedClassesHandler",
    "CheckpointLoader",
    "CheckpointSaver",
    "EMATeacherHandler",
    "EncoderExportHandler",
    "EpochLossTermsHandler",
    "EpochReseedHandler",
    "FreezeLastLayerHandler",
    "LeADERStageHandler",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "ProgressBar",
    "SSLScheduleHandler",
    "SSLTrainer",
    "compare_weights_digests",
    "is_rank0",
    "parameter_groups",
    "rank_local_tensors",
    "weights_digest",
    "write_weights_digest",
]
