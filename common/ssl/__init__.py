"""Self-supervised pre-training methods: one module per method, each an :class:`SSLMethod`."""

from .base import SSLMethod, make_teacher, unwrap, views
from .ema import ema_update_
from .simmim import SimMIM

__all__ = ["SSLMethod", "SimMIM", "ema_update_", "make_teacher", "unwrap", "views"]
