"""Ignite engines and handlers shared by every bundle's workflow."""

from .handlers import AnnotatedClassesHandler, ProgressBar, is_rank0
from .ssl_handlers import (
    EMATeacherHandler,
    EncoderExportHandler,
    EpochLossTermsHandler,
    SSLScheduleHandler,
    parameter_groups,
)
from .ssl_trainer import NonFiniteLossError, SSLTrainer

__all__ = [
    "AnnotatedClassesHandler",
    "EMATeacherHandler",
    "EncoderExportHandler",
    "EpochLossTermsHandler",
    "NonFiniteLossError",
    "ProgressBar",
    "SSLScheduleHandler",
    "SSLTrainer",
    "is_rank0",
    "parameter_groups",
]
