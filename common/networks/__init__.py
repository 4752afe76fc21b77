"""Networks: the Swin encoder, projection heads, segmenter assembly and pre-trained encoder files."""

from .heads import DINOHead, mlp
from .pretrained import EncoderLoadError, load_encoder, map_encoder_keys, read_encoder_file, save_encoder
from .segmenter import ARCHITECTURES, build_segmenter, swin_encoder
from .swin import SwinEncoder

__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "SwinEncoder",
    "EncoderLoadError",
    "build_segmenter",
    "load_encoder",
    "map_encoder_keys",
    "mlp",
    "read_encoder_file",
    "save_encoder",
    "swin_encoder",
]
