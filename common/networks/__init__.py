"""Networks: the Swin encoder, projection heads, segmenter assembly, pre-trained encoder files and the
transfer of whole pre-trained segmenters (SuPreM checkpoints included)."""

from .heads import DINOHead, mlp
from .pretrained import (
    EncoderLoadError,
    load_encoder,
    map_encoder_keys,
    read_encoder_file,
    save_encoder,
    state_dict_problems,
)
from .segmenter import ARCHITECTURES, build_segmenter, swin_encoder
from .swin import SwinEncoder
from .transfer import load_network_except_output, load_suprem_checkpoint, output_layer_prefixes

__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "SwinEncoder",
    "EncoderLoadError",
    "build_segmenter",
    "load_encoder",
    "load_network_except_output",
    "load_suprem_checkpoint",
    "map_encoder_keys",
    "mlp",
    "output_layer_prefixes",
    "read_encoder_file",
    "save_encoder",
    "state_dict_problems",
    "swin_encoder",
]
