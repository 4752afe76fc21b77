"""TorchScript (``ckpt_export``: scripting, tracing only for Swin) and ONNX (``onnx_export`` run as a
command) exports of one bundle per distinct inference network (which covers every bundle), at the smoke
sizes, with weights made as the model zoo makes them (``network_def``'s ``state_dict()`` saved as
``model.pt``), and the checks failing when they should."""

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from common.bundle_checks import BundleCheckError, example_input_shape, list_bundles, smoke_overrides
from common.bundle_export import (
    ONNX_ATOL,
    TORCHSCRIPT_ATOL,
    check_onnx_export,
    check_torchscript_export,
    inference_network,
    tracing_reason,
)

BUNDLES = list_bundles()
# The bundles whose smoke network scripts (suprem_pretrain's smoke backbone is SegResNet); the networks of
# the others are built on MONAI's SwinTransformer and trace.
SCRIPTED = {"coda_pretrain", "radiograph_classification", "radiograph_segmentation", "suprem_pretrain"}
# One bundle per distinct smoke network: the ten *_ssl_pretrain bundles share one (SwinEncoder, 3D, feature
# size 12); test_representatives_cover_every_bundle checks that each bundle's network is one of these.
REPRESENTATIVES = (
    "coda_pretrain",
    "ct_organ_classification",
    "dino_ssl_pretrain",
    "leader_pretrain",
    "multiorgan_ct_segmentation",
    "radiograph_classification",
    "radiograph_segmentation",
    "suprem_pretrain",
)


def _overrides(bundle: Path) -> dict:
    return smoke_overrides(bundle, "inference.json")


def _shape(bundle: Path) -> list[int]:
    """The smallest input each network takes: 32 per spatial axis (ConvNeXt and Swin need multiples of 32),
    64 for SwinUNETR (its instance norms need more than one voxel at stride 32)."""
    network = inference_network(bundle, **_overrides(bundle))
    return [1, 1] + [64 if isinstance(network, SwinUNETR) else 32] * (len(example_input_shape(bundle)) - 2)


def _zoo_weights(bundle: Path, path: Path) -> Path:
    """``model.pt`` as the model zoo's verifier makes it: the parsed ``network_def``'s state dict."""
    torch.save(inference_network(bundle, **_overrides(bundle)).state_dict(), path)
    return path


def _signature(bundle: Path) -> tuple:
    """What an export depends on: the network's structure (its repr) and the input shape."""
    return repr(inference_network(bundle, **_overrides(bundle))), tuple(_shape(bundle))


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_torchscript_export(name, tmp_path, record_property):
    bundle = next(b for b in BUNDLES if b.name == name)
    ckpt = _zoo_weights(bundle, tmp_path / "model.pt")
    result = check_torchscript_export(bundle, ckpt, tmp_path, _shape(bundle), **_overrides(bundle))
    assert result.method == ("script" if name in SCRIPTED else "trace")
    assert result.max_abs_diff <= TORCHSCRIPT_ATOL
    record_property("max_abs_diff", result.max_abs_diff)
    network_class = type(inference_network(bundle, **_overrides(bundle))).__name__
    extra_files = {"metadata.json": ""}
    assert torch.jit.load(str(result.path), _extra_files=extra_files).original_name == network_class
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra_files["metadata.json"])["version"] == version


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_onnx_export(name, tmp_path, record_property):
    bundle = next(b for b in BUNDLES if b.name == name)
    ckpt = _zoo_weights(bundle, tmp_path / "model.pt")
    result = check_onnx_export(bundle, ckpt, tmp_path, _shape(bundle), **_overrides(bundle))
    assert result.method == "onnx" and result.path.stat().st_size > 0
    assert result.max_abs_diff <= ONNX_ATOL
    record_property("max_abs_diff", result.max_abs_diff)


def test_representatives_cover_every_bundle():
    exported = {_signature(b) for b in BUNDLES if b.name in REPRESENTATIVES}
    assert len(exported) == len(REPRESENTATIVES)  # no two representatives alike
    assert [b.name for b in BUNDLES if _signature(b) not in exported] == []


class _Unscriptable(nn.Module):
    """A network TorchScript cannot compile (a ``**kwargs`` call)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(**{"dim": 1})


class _ExportDiffers(nn.Module):
    """A network whose scripted and ONNX-exported forward differ from eager by 1e-3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self._in_onnx_export():
            return self.conv(x) + 1e-3
        return self.conv(x)

    @torch.jit.unused
    def _in_onnx_export(self) -> bool:
        return torch.onnx.is_in_onnx_export()


def _network_override(cls: type) -> dict:
    return {"network_def": {"_target_": f"tests.test_bundle_export.{cls.__name__}"}}


def test_tracing_is_only_for_swin():
    swin = inference_network(BUNDLES[0].parent / "dino_ssl_pretrain")
    assert "SwinTransformer" in tracing_reason(swin)
    assert tracing_reason(_Unscriptable()) is None


def test_checks_fail_when_they_should(tmp_path):
    bundle = BUNDLES[0].parent / "radiograph_segmentation"
    config, shape, net = str(bundle / "configs" / "inference.json"), [1, 1, 32, 32], tmp_path / "net.pt"
    torch.save(_Unscriptable().state_dict(), net)
    with pytest.raises(BundleCheckError, match=rf"{config}: ckpt_export of network_def by scripting failed"):
        check_torchscript_export(bundle, net, tmp_path, shape, **_network_override(_Unscriptable))
    differs = _network_override(_ExportDiffers)
    with pytest.raises(BundleCheckError, match=r"model\.ts: TorchScript output differs from eager by 1\.0"):
        check_torchscript_export(bundle, net, tmp_path, shape, **differs)
    with pytest.raises(BundleCheckError, match=r"model\.onnx: ONNX Runtime output differs from eager by 1"):
        check_onnx_export(bundle, net, tmp_path, shape, **differs)
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "wrong.pt")  # weights of another network
    with pytest.raises(RuntimeError, match="state_dict"):
        check_onnx_export(bundle, tmp_path / "wrong.pt", tmp_path, shape, **differs)
