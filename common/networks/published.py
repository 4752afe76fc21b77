"""Published pre-trained checkpoints behind the one encoder interface.

:data:`PUBLISHED` maps a checkpoint name to the encoder of the collection that holds it (a name of
``common.networks.encoders.ENCODERS`` and the published model's constructor arguments), the file's key
layout, the package whose original class the equality tests (``tests/test_published_weights.py``) build,
and its source, address and licence. ``build_encoder(name, weights=PATH)`` (``common.networks.encoders``)
builds the encoder of a published name and loads the file with :func:`load_published`; the downstream
bundles reach it through their ``encoder_name`` and ``pretrained_encoder`` config keys.

The mapping is strict: wrapper prefixes are stripped (``module.``, ``backbone.``, ``swinViT.``, ...:
``common.networks.pretrained.map_encoder_keys``); the parts of a whole published network that are not the
encoder (decoders, heads; listed per entry in ``ignore``) are dropped and listed in the report of
:func:`load_published`; anything else that does not fit raises
:class:`~common.networks.pretrained.EncoderLoadError` naming the file and listing the missing, unexpected
and shape-mismatched keys. DINOv2-family files go through ``common.networks.dinov2.load_dinov2_weights``
with their layout (official, ``timm``, Hugging Face).
:func:`export_published_encoder` converts a published file into the collection's encoder file, which every
downstream bundle (``pretrained_encoder``) and the benchmark matrix take unchanged.
The files themselves are not downloaded by this project (addresses in :data:`PUBLISHED`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..data.fetch import sha256sum
from .dinov2 import dinov2_vit_config, load_dinov2_weights
from .pretrained import load_state_strict, read_encoder_file, save_encoder, strip_prefixes
from .resenc_encoder import RESENC_L
from .transfer import SUPREM_HEAD_PREFIXES

MONAI_SSL_HEADS = ("rotation_head.", "rotation_pre.", "contrastive_head.", "contrastive_pre.", "conv.")
SWINUNETR_DECODER = ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.", "decoder", "out.")
SUPREM = "SuPreM (Li et al., ICLR 2024), https://github.com/MrGiovanni/SuPreM"
SUPREM_URL = "https://huggingface.co/MrGiovanni/SuPreM/resolve/main/"
SUPREM_LICENCE = "code MIT; weights: the licence declared on huggingface.co/MrGiovanni/SuPreM"
DINOV2 = "DINOv2 (Oquab et al., 2023), https://github.com/facebookresearch/dinov2"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/"
DINOV2_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published checkpoint: ``encoder`` (a name of ``ENCODERS``) built with ``config``; the file's key
    ``layout``; the ``reference`` package and class the equality test compares with; ``source``, ``url``
    and ``licence``; ``ignore``: key prefixes (wrappers stripped) of the non-encoder parts of the file;
    ``dinov2_layout``: the DINOv2 key layout (``official``, ``timm``, ``hf``) for DINOv2-family files."""

    encoder: str
    config: Mapping = field(default_factory=dict)
    layout: str = ""
    reference: str = ""
    source: str = ""
    url: str = ""
    licence: str = ""
    ignore: tuple[str, ...] = ()
    dinov2_layout: str | None = None


def _dinov2_entries() -> dict[str, PublishedCheckpoint]:
    """The DINOv2 hub models (ViT-S/B/L/g, with and without four registers) in the official layout, and
    ViT-S/14 in the ``timm`` and Hugging Face layouts."""
    entries = {}
    for size, variant in DINOV2_SIZES.items():
        for registers, suffix in ((0, ""), (4, "_reg4")):
            name = f"dinov2_vit{size}14{suffix}"
            entries[name] = PublishedCheckpoint(
                encoder="vit",
                config=dinov2_vit_config(variant, registers),
                layout="official DINOv2 (torch.hub *_pretrain.pth)",
                reference="transformers Dinov2Model / Dinov2WithRegistersModel",
                source=DINOV2,
                url=f"{DINOV2_URL}dinov2_vit{size}14/{name}_pretrain.pth",
                licence="Apache-2.0",
                dinov2_layout="official",
            )
    for registers, suffix in ((0, ""), (4, "_reg4")):
        entries[f"timm_vit_small_patch14{suffix}_dinov2"] = PublishedCheckpoint(
            encoder="vit",
            config=dinov2_vit_config("small", registers),
            layout="timm vit_*_patch14[_reg4]_dinov2 (reg_token)",
            reference="mapped onto the official layout (timm not installable beside torch 2.13 CPU)",
            source=DINOV2 + "; timm's conversion",
            url=f"https://huggingface.co/timm/vit_small_patch14{suffix}_dinov2.lvd142m",
            licence="Apache-2.0",
            dinov2_layout="timm",
        )
        entries[f"hf_dinov2_small{'_with_registers' if registers else ''}"] = PublishedCheckpoint(
            encoder="vit",
            config=dinov2_vit_config("small", registers, layout="hf"),
            layout="Hugging Face transformers Dinov2Model / Dinov2WithRegistersModel",
            reference="transformers Dinov2Model / Dinov2WithRegistersModel",
            source=DINOV2 + "; Hugging Face's conversion",
            url=f"https://huggingface.co/facebook/dinov2{'-with-registers' if registers else ''}-small",
            licence="Apache-2.0",
            dinov2_layout="hf",
        )
    return entries


PUBLISHED: dict[str, PublishedCheckpoint] = {
    "swinunetr_ssl": PublishedCheckpoint(
        encoder="swin",
        config={"in_channels": 1, "feature_size": 48, "spatial_dims": 3},
        layout="research-contributions SwinUNETR/Pretrain model_swinvit.pt: 'module.<swinViT key>'",
        reference="monai.networks.nets.SwinUNETR(...).swinViT",
        source="Tang et al., CVPR 2022, https://github.com/Project-MONAI/research-contributions",
        url="https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/model_swinvit.pt",
        licence="Apache-2.0",
        ignore=MONAI_SSL_HEADS,
    ),
    "swinunetr_v2_ssl": PublishedCheckpoint(
        encoder="swin",
        config={"in_channels": 1, "feature_size": 48, "spatial_dims": 3, "use_v2": True},
        layout="SwinUNETR-v2 / VoCo: '[module.][backbone.][swinViT.]<swinViT key>' incl. layers{i}c",
        reference="monai.networks.nets.SwinUNETR(use_v2=True).swinViT",
        source="SwinUNETR-v2 (He et al., MICCAI 2023); VoCo (Wu et al., CVPR 2024), github.com/Luffy03/VoCo",
        url="https://huggingface.co/Luffy503/VoCo",
        licence="Apache-2.0 (MONAI); VoCo: see its repository",
        ignore=MONAI_SSL_HEADS + SWINUNETR_DECODER,
    ),
    "suprem_swinunetr": PublishedCheckpoint(
        encoder="swin",
        config={"in_channels": 1, "feature_size": 48, "spatial_dims": 3},
        layout="SuPreM {'net': {'module.backbone.<SwinUNETR key>', 'module.<head>'}}: the swinViT part",
        reference="monai.networks.nets.SwinUNETR(...).swinViT",
        source=SUPREM,
        url=SUPREM_URL + "supervised_suprem_swinunetr_2100.pth",
        licence=SUPREM_LICENCE,
        ignore=SWINUNETR_DECODER + SUPREM_HEAD_PREFIXES,
    ),
    "suprem_segresnet": PublishedCheckpoint(
        encoder="segresnet",
        config={"in_channels": 1, "spatial_dims": 3, "init_filters": 16},
        layout="SuPreM {'net': {'module.<SegResNet key>'}}: convInit and down_layers",
        reference="monai.networks.nets.SegResNet(...).encode",
        source=SUPREM,
        url=SUPREM_URL + "supervised_suprem_segresnet_2100.pth",
        licence=SUPREM_LICENCE,
        ignore=("up_layers.", "up_samples.", "conv_final.") + SUPREM_HEAD_PREFIXES,
    ),
    "suprem_unet": PublishedCheckpoint(
        encoder="genesis_unet",
        config={"in_channels": 1},
        layout="SuPreM {'net': {'module.backbone.<Models Genesis UNet3D key>'}}: down_tr64 ... down_tr512",
        reference="common.networks.GenesisUNet, checked against Models Genesis' layer table",
        source=SUPREM
        + "; Models Genesis (Zhou et al., MedIA 2021), https://github.com/MrGiovanni/ModelsGenesis",
        url=SUPREM_URL + "supervised_suprem_unet_2100.pth",
        licence=SUPREM_LICENCE,
        ignore=("up_tr", "out_tr.") + SUPREM_HEAD_PREFIXES,
    ),
    "ct_fm": PublishedCheckpoint(
        encoder="segresencoder",
        config={"in_channels": 1, "spatial_dims": 3, "init_filters": 32, "blocks_down": (1, 2, 2, 4, 4)},
        layout="lighter-zoo SegResEncoder (MONAI SegResEncoder keys conv_init.*, layers.*)",
        reference="monai.networks.nets.segresnet_ds.SegResEncoder",
        source="CT-FM (Pai et al., 2025), https://github.com/project-lighter/CT-FM",
        url="https://huggingface.co/project-lighter/ct_fm_feature_extractor",
        licence="see the model card at the URL",
    ),
    **{
        f"medicalnet_resnet{depth}": PublishedCheckpoint(
            encoder="resnet",
            config={"depth": depth, "in_channels": 1, "spatial_dims": 3},
            layout="MedicalNet resnet_N.pth: {'state_dict': {'module.<ResNet key>', 'module.conv_seg.*'}}",
            reference=f"monai.networks.nets.resnet{depth} with get_medicalnet_pretrained_resnet_args",
            source="MedicalNet / Med3D (Chen et al., 2019), https://github.com/Tencent/MedicalNet",
            url=f"https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth}/resolve/main/resnet_{depth}.pth",
            licence="MIT",
            ignore=("conv_seg.",),
        )
        for depth in (10, 18, 34, 50)
    },
    **_dinov2_entries(),
    "rad_dino": PublishedCheckpoint(
        encoder="vit",
        config=dinov2_vit_config("base", 0, img_size=518, layout="hf"),
        layout="Hugging Face transformers Dinov2Model (model.safetensors)",
        reference="transformers Dinov2Model",
        source="RAD-DINO (Perez-Garcia et al., Nat. Mach. Intell. 2025), huggingface.co/microsoft/rad-dino",
        url="https://huggingface.co/microsoft/rad-dino",
        licence="MSRLA (Microsoft Research License Agreement)",
        dinov2_layout="hf",
    ),
    "nnssl_resenc_l": PublishedCheckpoint(
        encoder="resenc",
        config={"in_channels": 1, "spatial_dims": 3, **RESENC_L},
        layout="nnssl {'network_weights': ResidualEncoderUNet encoder.*, decoder.*; 'nnssl_adaptation_plan'}",
        reference="dynamic_network_architectures ResidualEncoderUNet(...).encoder",
        source="nnssl / OpenMind (Wald et al., CVPR 2025), https://github.com/MIC-DKFZ/nnssl",
        url="https://huggingface.co/collections/MIC-DKFZ/openmind-models-6819c21c7fe6f0aaaab7dadf",
        licence="nnssl code CC BY-SA 4.0; weights: the licence declared on each model card at the URL",
        ignore=("decoder.",),
    ),
}


def published_entry(name: str) -> PublishedCheckpoint:
    """``PUBLISHED[name]``; ``ValueError`` listing the names for an unknown one."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown published checkpoint {name!r}; choose one of {sorted(PUBLISHED)}")
    return PUBLISHED[name]


def load_published(encoder: nn.Module, path: str | os.PathLike, name: str) -> dict:
    """Load the published checkpoint ``name``'s file at ``path`` into ``encoder`` (built from its entry)
    with the strict mapping of the module doc. Returns ``{"ignored": the file's non-encoder keys}``."""
    entry = published_entry(name)
    if entry.dinov2_layout:
        load_dinov2_weights(encoder, path, entry.dinov2_layout)
        return {"ignored": []}
    state, _ = read_encoder_file(path)
    ignored = sorted(k for k in state if entry.ignore and strip_prefixes(k).startswith(entry.ignore))
    kept = {k: v for k, v in state.items() if k not in set(ignored)}
    load_state_strict(encoder, kept, f"{path}: published checkpoint {name!r} ({entry.layout})")
    return {"ignored": ignored}


def export_published_encoder(name: str, file: str | os.PathLike, out: str | os.PathLike, **config) -> Path:
    """Build the published checkpoint ``name`` from ``file`` (``build_encoder(name, weights=file,
    **config)``: the entry's configuration updated by ``config``, the strict mapping) and write it to
    ``out`` as the collection's encoder file (atomic). Meta: ``encoder``, ``encoder_config``, and
    ``published`` (the name), ``source``, ``published_file`` and ``published_sha256`` (of ``file``)."""
    from .encoders import build_encoder  # encoders imports this module

    entry = published_entry(name)
    encoder = build_encoder(name, weights=file, **config)
    return save_encoder(
        encoder,
        out,
        encoder=entry.encoder,
        encoder_config={**entry.config, **config},
        published=name,
        source=entry.source,
        published_file=str(file),
        published_sha256=sha256sum(Path(file)),
    )
