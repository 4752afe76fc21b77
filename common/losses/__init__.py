"""Losses, one per module, each citing the equation it implements."""

from .dino import DINOLoss
from .ibot import IBOTPatchLoss
from .mae import mae_loss, patchify
from .moco import ctr, symmetric_ctr
from .ntxent import nt_xent_loss
from .simmim import masked_l1_loss

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "ctr",
    "mae_loss",
    "masked_l1_loss",
    "nt_xent_loss",
    "patchify",
    "symmetric_ctr",
]
