"""Segmenter assembly and encoder files: round trip, prefix mapping, clear errors."""

import pytest
import torch

from common.networks import EncoderLoadError, build_segmenter, load_encoder, save_encoder, swin_encoder


@pytest.fixture(scope="module")
def tiny_swin():
    torch.manual_seed(0)
    return build_segmenter("swinunetr", in_channels=1, out_channels=3, feature_size=12)


def test_segmenter_output_shape(tiny_swin):
    # SwinUNETR needs multiples of 32 and at least 64: at 32³ its bottleneck instance norm sees one voxel
    with torch.no_grad():
        out = tiny_swin(torch.randn(1, 1, 64, 64, 64))
    assert out.shape == (1, 3, 64, 64, 64)


def test_unet_option_and_unknown_arch():
    unet = build_segmenter("unet", out_channels=4, feature_size=8)
    with torch.no_grad():
        assert unet(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    with pytest.raises(ValueError, match="unknown segmenter arch 'vnet'"):
        build_segmenter("vnet")
    with pytest.raises(ValueError, match="arch='swinunetr'"):
        build_segmenter("unet", pretrained_encoder="encoder.pt")


def test_pretrained_encoder_is_loaded_not_reinitialised(tiny_swin, tmp_path):
    path = save_encoder(swin_encoder(tiny_swin), tmp_path / "encoder.pt", method="test", feature_size=12)
    torch.manual_seed(123)  # a different initialisation for the new network
    fresh = build_segmenter("swinunetr", out_channels=5, feature_size=12, pretrained_encoder=path)
    source = swin_encoder(tiny_swin).state_dict()
    for key, value in swin_encoder(fresh).state_dict().items():
        assert torch.equal(value, source[key]), key
    # the decoder is new: its output layer has the new class count
    assert fresh.out.conv.conv.weight.shape[0] == 5


def test_wrapper_prefixes_are_stripped(tiny_swin, tmp_path):
    state = {f"module.swinViT.{k}": v for k, v in swin_encoder(tiny_swin).state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ddp.pt")
    target = build_segmenter("swinunetr", out_channels=3, feature_size=12)
    load_encoder(swin_encoder(target), tmp_path / "ddp.pt")
    key = "patch_embed.proj.weight"
    assert torch.equal(swin_encoder(target).state_dict()[key], swin_encoder(tiny_swin).state_dict()[key])


def test_missing_and_mismatched_keys_are_listed(tiny_swin, tmp_path):
    state = dict(swin_encoder(tiny_swin).state_dict())
    state.pop("patch_embed.proj.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(EncoderLoadError) as err:
        load_encoder(swin_encoder(build_segmenter("swinunetr", feature_size=12)), path)
    message = str(err.value)
    assert str(path) in message and "missing keys: patch_embed.proj.weight" in message
    assert "unexpected keys: extra.weight" in message
    wider = build_segmenter("swinunetr", feature_size=24)
    good = save_encoder(swin_encoder(tiny_swin), tmp_path / "good.pt")
    with pytest.raises(
        EncoderLoadError,
        match=r"shape mismatch keys: layers1.0.blocks.0.attn.proj.bias: file \(12,\) vs network \(24,\)",
    ):
        load_encoder(swin_encoder(wider), good)


def test_unreadable_encoder_file(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="corrupt.pt: not a readable PyTorch weights file"):
        load_encoder(torch.nn.Linear(2, 2), bad)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_encoder(torch.nn.Linear(2, 2), tmp_path / "absent.pt")
