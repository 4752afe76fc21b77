"""Every encoder of the collection behind one interface, built from a config and an encoder file."""

import pytest
import torch
from monai.networks.nets import SegResNet

from common.networks import ENCODERS, build_encoder, build_encoder_segmenter, encoder_from_file, save_encoder
from common.networks.pretrained import EncoderLoadError

TINY = {
    "swin": ({"in_channels": 1, "feature_size": 12, "spatial_dims": 3}, (1, 1, 32, 32, 32)),
    "convnext": (
        {"in_channels": 1, "spatial_dims": 2, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
        (1, 1, 64, 64),
    ),
    "vit": ({"in_channels": 1, "img_size": 56, "embed_dim": 24, "depth": 4, "num_heads": 2}, (1, 1, 56, 56)),
    "segresnet": ({"in_channels": 1, "spatial_dims": 3, "init_filters": 8}, (1, 1, 32, 32, 32)),
    "segresencoder": ({"in_channels": 1, "init_filters": 8, "blocks_down": [1, 1, 1, 1]}, (1, 1, 32, 32, 32)),
    "resnet": ({"depth": 10, "in_channels": 1}, (1, 1, 32, 32, 32)),
    "genesis_unet": ({"in_channels": 1}, (1, 1, 16, 16, 16)),
    "resenc": (
        {"features_per_stage": [8, 16, 24, 32], "n_blocks_per_stage": [1, 1, 1, 1], "strides": [1, 2, 2, 2]},
        (1, 1, 32, 32, 32),
    ),
}


def test_every_registered_encoder_is_covered():
    assert set(TINY) == set(ENCODERS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_interface_and_file_round_trip(name, tmp_path):
    config, shape = TINY[name]
    torch.manual_seed(0)
    encoder = build_encoder(name, **config).eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        pooled, maps, (cls, patches) = encoder(x), encoder.features(x), encoder.tokens(x)
    assert pooled.shape == (1, encoder.out_dim)
    assert [m.shape[1] for m in maps] == list(encoder.feature_channels) and len(maps) >= 4
    assert [shape[2] // m.shape[2] for m in maps] == list(encoder.feature_strides)
    assert patches.ndim == 3 and (cls is None) == (name != "vit")
    save_encoder(encoder, tmp_path / "encoder.pt", encoder=name, encoder_config=config)
    rebuilt = encoder_from_file(tmp_path / "encoder.pt").eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pooled)
    segmenter = build_encoder_segmenter(name, config, 3, shape[2:], tmp_path / "encoder.pt", decoder="unet")
    assert segmenter.eval()(x).shape == (1, 3, *shape[2:])


def test_segresnet_encoder_is_the_encoder_half_of_a_segresnet():
    torch.manual_seed(0)
    full = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=4).eval()
    encoder = build_encoder("segresnet", **TINY["segresnet"][0]).eval()
    state = {k: v for k, v in full.state_dict().items() if k.startswith(("convInit", "down_layers"))}
    encoder.load_state_dict(state)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = full.encode(x)[1]
        assert all(torch.equal(a, b) for a, b in zip(encoder.features(x), expected, strict=True))


def test_files_without_an_encoder_name_and_unknown_names(tmp_path):
    swin_config = TINY["swin"][0]
    save_encoder(
        build_encoder("swin", **swin_config), tmp_path / "legacy.pt", **swin_config
    )  # 3D SSL bundles
    assert type(encoder_from_file(tmp_path / "legacy.pt")).__name__ == "SwinEncoder"
    save_encoder(build_encoder("swin", **swin_config), tmp_path / "bare.pt")
    with pytest.raises(EncoderLoadError, match="does not say which encoder"):
        encoder_from_file(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="unknown encoder 'no_such_encoder'"):
        build_encoder("no_such_encoder")
