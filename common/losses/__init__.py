"""Losses, one per module, each citing the equation it implements."""

from .simmim import masked_l1_loss

__all__ = ["masked_l1_loss"]
