"""Losses, one per module, each citing the equation it implements."""

from .dino import DINOLoss
from .ibot import IBOTPatchLoss
from .mae import mae_loss, patchify
from .moco import ctr, symmetric_ctr
from .ntxent import nt_xent_loss
from .partial import PartialLabelDiceCELoss, merged_log_probs
from .simmim import masked_l1_loss

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "PartialLabelDiceCELoss",
    "ctr",
    "mae_loss",
    "masked_l1_loss",
    "merged_log_probs",
    "nt_xent_loss",
    "patchify",
    "symmetric_ctr",
]
