"""Networks: the encoders (Swin 2D/3D, ConvNeXt 2D/3D, DINOv2-compatible ViT) behind one interface
(``encoders``), projection heads, classifiers and decoders on any encoder, parameter-efficient fine-tuning,
segmenter assembly, pre-trained encoder files, published checkpoints (``published``) and the transfer of whole
pre-trained segmenters."""

from .classifier import EncoderClassifier, SliceAveragedEncoder, build_classifier, input_encoder
from .convnext import ConvNeXt
from .decoders import LinearDecoder, UNetDecoder
from .dinov2 import dinov2_vit, load_dinov2_weights
from .encoder_decoder import EncoderDecoder, SliceWise, build_encoder_segmenter, build_frozen_segmenter
from .encoders import ENCODERS, build_encoder, encoder_from_file
from .genesis_unet import GenesisEncoder, GenesisUNet
from .heads import DINOHead, mlp
from .nnssl import nnssl_adaptation
from .options import network_options
from .peft import apply_bitfit, apply_lora, apply_peft, merge_lora, trainable_share
from .pretrained import (
    EncoderLoadError,
    load_encoder,
    map_encoder_keys,
    read_encoder_file,
    save_encoder,
    state_dict_problems,
)
from .published import PUBLISHED, PublishedCheckpoint, load_published
from .resenc_encoder import ResEncEncoder
from .resnet_encoder import ResNetEncoder
from .segmenter import ARCHITECTURES, build_segmenter, swin_encoder
from .segres_encoder_ds import SegResDSEncoder
from .swin import SwinEncoder
from .transfer import load_network_except_output, load_suprem_checkpoint, output_layer_prefixes
from .vit import ViT, interpolate_pos_embed

__all__ = [
    "GenesisEncoder",
    "GenesisUNet",
    "PUBLISHED",
    "PublishedCheckpoint",
    "ResEncEncoder",
    "ResNetEncoder",
    "SegResDSEncoder",
    "load_published",
    "nnssl_adaptation",
    "network_options",
    "ENCODERS",
    "ConvNeXt",
    "EncoderClassifier",
    "EncoderDecoder",
    "LinearDecoder",
    "SliceAveragedEncoder",
    "SliceWise",
    "UNetDecoder",
    "ViT",
    "dinov2_vit",
    "interpolate_pos_embed",
    "load_dinov2_weights",
    "apply_bitfit",
    "apply_lora",
    "apply_peft",
    "build_classifier",
    "build_encoder",
    "build_encoder_segmenter",
    "build_frozen_segmenter",
    "encoder_from_file",
    "input_encoder",
    "merge_lora",
    "trainable_share",
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
