"""Whole-network transfer (SuPreM, Li et al. ICLR 2024): output-layer prefixes, loading all but the output
layer, SuPreM checkpoint layouts, the conversion tool and clear errors."""

import importlib.util

import pytest
import torch

from common.bundle import REPO_ROOT
from common.networks import (
    EncoderLoadError,
    build_segmenter,
    load_network_except_output,
    load_suprem_checkpoint,
    output_layer_prefixes,
)

SIZES = {"swinunetr": 12, "segresnet": 8, "unet": 4}
HEAD_KEYS = (
    "module.precls_conv.0.weight",
    "module.GAP.3.weight",
    "module.controller.weight",
    "module.text_to_vision.weight",
    "module.organ_embedding",
)


def build(arch, out_channels, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_segmenter(arch, out_channels=out_channels, feature_size=SIZES[arch], **kwargs)


def split(net):
    """(non-output, output) parts of ``net``'s state dict."""
    prefixes = output_layer_prefixes(net)
    state = net.state_dict()
    return (
        {k: v for k, v in state.items() if not k.startswith(prefixes)},
        {k: v for k, v in state.items() if k.startswith(prefixes)},
    )


def assert_same(state, reference):
    assert state.keys() == reference.keys()
    for key, value in state.items():
        assert torch.equal(value, reference[key]), key


@pytest.fixture(scope="module")
def sources():
    """One pre-trained stand-in per arch, with 5 classes."""
    return {arch: build(arch, 5, seed=7) for arch in SIZES}


@pytest.mark.parametrize("arch", list(SIZES))
def test_output_prefixes_are_exactly_the_class_dependent_keys(arch, sources):
    three, five = build(arch, 3).state_dict(), sources[arch].state_dict()
    assert three.keys() == five.keys()
    changed = {k for k in three if three[k].shape != five[k].shape}
    under = {k for k in three if k.startswith(output_layer_prefixes(sources[arch]))}
    assert changed and changed == under
    with pytest.raises(TypeError, match="Linear"):
        output_layer_prefixes(torch.nn.Linear(2, 2))


def test_segresnet_arch_and_argument_errors():
    net = build("segresnet", 3)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="arch='swinunetr'"):
        build_segmenter("segresnet", pretrained_encoder="encoder.pt")
    with pytest.raises(ValueError, match="not both"):
        build_segmenter("swinunetr", pretrained_encoder="encoder.pt", pretrained_network="network.pt")


@pytest.mark.parametrize("arch", list(SIZES))
def test_pretrained_network_loads_all_but_the_output_layer(arch, sources, tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": sources[arch].state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
    fresh = build(arch, 3, seed=1)
    loaded = build(arch, 3, seed=1, pretrained_network=path)
    body, head = split(loaded)
    assert_same(body, split(sources[arch])[0])
    assert_same(head, split(fresh)[1])  # the output layer keeps its fresh initialisation


def suprem_file(arch, source, path):
    """A checkpoint in the layout of SuPreM's released files."""
    if arch == "swinunetr":  # Universal_model: MONAI SwinUNETR backbone + class-conditional head
        net = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
        net |= {key: torch.randn(2, 3) for key in HEAD_KEYS}
    else:
        net = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"net": net, "optimizer": {"state": {}, "param_groups": []}, "epoch": 40}, path)
    return path


@pytest.mark.parametrize("arch", ["swinunetr", "segresnet"])
def test_suprem_checkpoint_import_and_conversion(arch, sources, tmp_path):
    src = suprem_file(arch, sources[arch], tmp_path / f"suprem_{arch}.pth")
    target = build(arch, 3, seed=2)
    report = load_suprem_checkpoint(target, src)
    body, head = split(target)
    assert_same(body, split(sources[arch])[0])
    assert report["loaded"] == len(body)
    assert report["skipped_output"] == sorted(head)
    assert report["ignored"] == (sorted(HEAD_KEYS) if arch == "swinunetr" else [])

    spec = importlib.util.spec_from_file_location("convert_suprem", REPO_ROOT / "tools" / "convert_suprem.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "models" / "converted.pt"
    tool.convert(str(src), arch, str(out), feature_size=SIZES[arch], out_channels=7)
    assert set(torch.load(out, weights_only=True)) == {"model"}
    transferred = build(arch, 4, seed=3, pretrained_network=out)
    assert_same(split(transferred)[0], split(sources[arch])[0])


def test_suprem_head_keys_are_errors_for_the_generic_loader(sources, tmp_path):
    src = suprem_file("swinunetr", sources["swinunetr"], tmp_path / "suprem.pth")
    with pytest.raises(EncoderLoadError, match=r"unexpected keys: module.GAP.3.weight, module.controller"):
        load_network_except_output(build("swinunetr", 3), src)


def test_suprem_unet3d_is_explained(tmp_path):
    path = tmp_path / "suprem_unet.pth"
    net = {
        "module.backbone.down_tr64.ops.0.conv1.weight": torch.zeros(32, 1, 3, 3, 3),
        "module.backbone.out_tr.final_conv.weight": torch.zeros(32, 64, 1, 1, 1),
    }
    torch.save({"net": net, "epoch": 1}, path)
    with pytest.raises(EncoderLoadError) as err:
        load_suprem_checkpoint(build("unet", 3), path)
    message = str(err.value)
    assert str(path) in message and "UNet3D" in message and "MONAI's UNet" in message
    assert "segresnet and swinunetr checkpoints are supported" in message


def test_wrong_architecture_size_and_corrupt_files(sources, tmp_path):
    path = tmp_path / "segresnet.pt"
    torch.save({"model": sources["segresnet"].state_dict()}, path)
    with pytest.raises(EncoderLoadError) as err:
        build_segmenter("swinunetr", out_channels=3, feature_size=12, pretrained_network=path)
    message = str(err.value)
    assert str(path) in message and "do not fit SwinUNETR" in message
    assert "missing keys: decoder1." in message and "in all)" in message
    assert "unexpected keys: convInit.conv.weight, conv_final.0.bias" in message
    with pytest.raises(EncoderLoadError, match=r"shape mismatch keys: .*file \(8,\) vs network \(16,\)"):
        build_segmenter("segresnet", out_channels=3, feature_size=16, pretrained_network=path)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(EncoderLoadError, match="corrupt.pth: not a readable PyTorch weights file"):
        load_suprem_checkpoint(build("segresnet", 3), bad)
    with pytest.raises(EncoderLoadError, match="corrupt.pth: not a readable PyTorch weights file"):
        build_segmenter("unet", feature_size=4, pretrained_network=bad)
