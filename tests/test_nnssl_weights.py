"""nnssl / OpenMind ResEnc-L checkpoints load through the project with the source encoder's outputs.

A small ``ResidualEncoderUNet`` of ``dynamic-network-architectures`` (the class nnssl builds ResEnc-L from,
configured as nnssl's ``get_res_enc_l`` with fewer stages and channels) is initialised randomly and saved in
nnssl's checkpoint layout (``network_weights`` and the embedded ``nnssl_adaptation_plan``); the file is loaded
by its published name and read back for spacing and intensity normalisation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.networks import EncoderLoadError, build_encoder, load_published, nnssl_adaptation

unet = pytest.importorskip("dynamic_network_architectures.architectures.unet", reason="make setup")

SMALL = {"features_per_stage": (8, 16, 24, 32), "n_blocks_per_stage": (1, 2, 1, 1), "strides": (1, 2, 2, 2)}
TOL = 1e-5


def reference_unet(features_per_stage, n_blocks_per_stage, strides) -> nn.Module:
    """nnssl's ResEnc-L recipe (``get_res_enc_l``) with the given stages."""
    n = len(features_per_stage)
    return unet.ResidualEncoderUNet(
        input_channels=1,
        n_stages=n,
        features_per_stage=list(features_per_stage),
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[s] * 3 for s in strides],
        n_blocks_per_stage=list(n_blocks_per_stage),
        num_classes=1,
        n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def adaptation_plan() -> dict:
    """An nnssl adaptation plan as ``AdaptationPlan.serialize`` writes it (the fields read here)."""
    config = {
        "data_identifier": "nnsslPlans_onemmiso",
        "spacing_style": "onemmiso",
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": False,
        "spacing": [1.0, 1.0, 1.0],
        "patch_size": [160, 160, 160],
    }
    return {
        "architecture_plans": {"arch_class_name": "ResEncL", "arch_kwargs": None},
        "pretrain_plan": {"dataset_name": "Dataset745_OpenMind", "configurations": {"onemmiso": config}},
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [160, 160, 160],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
    }


def test_nnssl_resenc_checkpoint_matches_dynamic_network_architectures(tmp_path):
    torch.manual_seed(0)
    net = reference_unet(**SMALL).eval()
    path = tmp_path / "checkpoint_final.pth"
    checkpoint = {"network_weights": net.state_dict(), "nnssl_adaptation_plan": adaptation_plan()}
    torch.save(checkpoint | {"current_epoch": 1000, "trainer_name": "BaseMAETrainer"}, path)
    encoder = build_encoder("nnssl_resenc_l", weights=path, **SMALL).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours, reference = encoder.features(x), net.encoder(x)
    assert len(ours) == len(reference) == 4
    delta = max((a - b).abs().max().item() for a, b in zip(ours, reference, strict=True))
    print(f"max |delta| = {delta:.2e}")
    assert delta <= TOL
    ignored = load_published(build_encoder("resenc", **SMALL), path, "nnssl_resenc_l")["ignored"]
    assert ignored and all(k.startswith("decoder.") for k in ignored)
    assert nnssl_adaptation(path) == {
        "spacing": [1.0, 1.0, 1.0],
        "intensity": ["ZScoreNormalization"],
        "use_mask_for_norm": False,
        "configuration": "onemmiso",
        "in_channels": 1,
        "patch_size": [160, 160, 160],
        "architecture": "ResEncL",
    }


def test_mismatching_nnssl_files_name_the_file_and_the_keys(tmp_path):
    state = reference_unet(**SMALL).state_dict()
    del state["encoder.stages.3.blocks.0.conv1.conv.weight"]
    state["encoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": state}, bad)
    with pytest.raises(EncoderLoadError, match="bad.pth") as err:
        build_encoder("nnssl_resenc_l", weights=bad, **SMALL)
    assert "missing keys: encoder.stages.3.blocks.0.conv1.conv.weight" in str(err.value)
    assert "unexpected keys: encoder.extra.weight" in str(err.value)
    with pytest.raises(EncoderLoadError, match=r"bad.pth: no key 'nnssl_adaptation_plan'"):
        nnssl_adaptation(bad)
    plan = adaptation_plan()
    del plan["pretrain_plan"]["configurations"]["onemmiso"]["spacing"]
    torch.save({"network_weights": state, "nnssl_adaptation_plan": plan}, bad)
    with pytest.raises(EncoderLoadError, match=r"configurations\.onemmiso: no key 'spacing'"):
        nnssl_adaptation(bad)


def test_published_configuration_is_nnssl_resenc_l():
    """The entry's encoder has the parameter names and shapes of nnssl's ResEnc-L encoder (``get_res_enc_l``:
    6 stages of 32 ... 320 channels, 1, 3, 4, 6, 6, 6 blocks), built without memory on the meta device."""
    with torch.device("meta"):
        ours = build_encoder("nnssl_resenc_l").state_dict()
        full = reference_unet(
            features_per_stage=(32, 64, 128, 256, 320, 320),
            n_blocks_per_stage=(1, 3, 4, 6, 6, 6),
            strides=(1, 2, 2, 2, 2, 2),
        ).state_dict()
    reference = {k: v.shape for k, v in full.items() if k.startswith("encoder.")}
    assert {k: v.shape for k, v in ours.items()} == reference
