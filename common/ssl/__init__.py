"""Self-supervised pre-training methods: one module per method, each an :class:`SSLMethod`.

Masked image modelling: :class:`SimMIM`, :class:`MAE`; self-distillation: :class:`DINO`, :class:`IBOT`;
hybrid masked modelling + local and global self-distillation: :class:`SMIT`; contrastive: :class:`SimCLR`,
:class:`MoCoV3`; predictive / restorative: :class:`RotationPrediction`, :class:`ModelsGenesis`; and the
SwinUNETR recipe (rotation + inpainting + contrastive): :class:`SwinUNETRRecipe`. Radiographs of many organs:
:class:`Coda` (inter-organ supervised contrastive + intra-organ self-distillation) and :class:`LeADER`
(distillation from two frozen experts).
"""

from .base import SSLMethod, make_teacher, unwrap, views
from .coda import Coda
from .dino import DINO
from .ema import ema_update_
from .genesis import ModelsGenesis
from .ibot import IBOT
from .leader import LeADER, load_teacher
from .mae import MAE
from .mocov3 import MoCoV3
from .rotation import RotationPrediction
from .simclr import SimCLR
from .simmim import SimMIM
from .smit import SMIT
from .swinunetr_recipe import SwinUNETRRecipe

__all__ = [
    "Coda",
    "LeADER",
    "load_teacher",
    "DINO",
    "IBOT",
    "MAE",
    "SMIT",
    "ModelsGenesis",
    "MoCoV3",
    "RotationPrediction",
    "SSLMethod",
    "SimCLR",
    "SimMIM",
    "SwinUNETRRecipe",
    "ema_update_",
    "make_teacher",
    "unwrap",
    "views",
]
