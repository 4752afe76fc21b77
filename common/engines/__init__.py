"""Ignite engines and handlers shared by every bundle's workflow."""

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
    SSLScheduleHandler,
    parameter_groups,
)
from .ssl_trainer import SSLTrainer

__all__ = [
    "AnnotatedClassesHandler",
    "CheckpointLoader",
    "EMATeacherHandler",
    "EncoderExportHandler",
    "EpochLossTermsHandler",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "ProgressBar",
    "SSLScheduleHandler",
    "SSLTrainer",
    "is_rank0",
    "parameter_groups",
]
