"""Networks: segmenter assembly and pre-trained encoder files."""

from .pretrained import EncoderLoadError, load_encoder, map_encoder_keys, read_encoder_file, save_encoder
from .segmenter import ARCHITECTURES, build_segmenter, swin_encoder

__all__ = [
    "ARCHITECTURES",
    "EncoderLoadError",
    "build_segmenter",
    "load_encoder",
    "map_encoder_keys",
    "read_encoder_file",
    "save_encoder",
    "swin_encoder",
]
