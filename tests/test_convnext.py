"""ConvNeXt 2D/3D (Liu et al., CVPR 2022) against a reference written out from the paper's equations, its
parameter counts against a formula and the paper's Table 1, and the encoder interface."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from common.networks.convnext import VARIANTS, ConvNeXt
from common.networks.encoders import build_encoder
from common.networks.pretrained import save_encoder

TINY = {"depths": (1, 2, 1, 1), "dims": (8, 16, 24, 32)}


def layer_norm(x, weight, bias, eps=1e-6):
    """LayerNorm over the last axis, written out: (x - mean) / sqrt(biased variance + eps) * w + b."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def channels_first_norm(x, weight, bias):
    return layer_norm(x.movedim(1, -1), weight, bias).movedim(-1, 1)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def patchify_conv(x, weight, bias):
    """A convolution with kernel = stride = p as a matrix product on non-overlapping patches."""
    p, dims = weight.shape[-1], x.ndim - 2
    b, c, *size = x.shape
    grid = [s // p for s in size]
    split = x.reshape(b, c, *itertools.chain.from_iterable((g, p) for g in grid))
    # (B, C, g1, p, g2, p, ...) -> (B, g1, g2, ..., C, p, p, ...)
    order = [0, *range(2, 2 + 2 * dims, 2), 1, *range(3, 3 + 2 * dims, 2)]
    patches = split.permute(order).reshape(b, *grid, -1)
    out = patches @ weight.reshape(weight.shape[0], -1).T + bias
    return out.movedim(-1, 1)


def depthwise_conv(x, weight, bias):
    """Depthwise 'same' convolution (odd kernel k) as a sum of the k^d shifted copies of the padded input."""
    k, dims = weight.shape[-1], x.ndim - 2
    pad = k // 2
    padded = F.pad(x, [pad] * (2 * dims))
    out = torch.zeros_like(x)
    for offset in itertools.product(range(k), repeat=dims):
        window = padded[
            (slice(None), slice(None), *(slice(o, o + s) for o, s in zip(offset, x.shape[2:], strict=True)))
        ]
        tap = weight[(slice(None), 0, *offset)].reshape(1, -1, *[1] * dims)
        out = out + tap * window
    return out + bias.reshape(1, -1, *[1] * dims)


def reference_convnext(state, x, depths):
    """The paper's network from a state dict: stem, four stages of blocks, down-sampling between them;
    returns the four stage outputs and the normed pooled embedding."""
    maps = []
    for i in range(4):
        pre = f"downsample_layers.{i}."
        if i == 0:
            x = patchify_conv(x, state[pre + "0.weight"], state[pre + "0.bias"])
            x = channels_first_norm(x, state[pre + "1.weight"], state[pre + "1.bias"])
        else:
            x = channels_first_norm(x, state[pre + "0.weight"], state[pre + "0.bias"])
            x = patchify_conv(x, state[pre + "1.weight"], state[pre + "1.bias"])
        for j in range(depths[i]):
            s = {
                k[len(f"stages.{i}.{j}.") :]: v for k, v in state.items() if k.startswith(f"stages.{i}.{j}.")
            }
            y = depthwise_conv(x, s["dwconv.weight"], s["dwconv.bias"]).movedim(1, -1)
            y = layer_norm(y, s["norm.weight"], s["norm.bias"])
            y = (
                gelu(y @ s["pwconv1.weight"].T + s["pwconv1.bias"]) @ s["pwconv2.weight"].T
                + s["pwconv2.bias"]
            )
            x = x + (s["gamma"] * y).movedim(-1, 1)
        maps.append(x)
    pooled = layer_norm(x.flatten(2).mean(-1), state["norm.weight"], state["norm.bias"])
    return maps, pooled


def randomised(net):
    """Random parameters of a useful size (layer scale 1e-6 would hide the blocks)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("spatial_dims,size", [(2, (64, 96)), (3, (32, 64, 32))])
def test_matches_reference_and_interface(spatial_dims, size):
    net = randomised(ConvNeXt(in_channels=2, spatial_dims=spatial_dims, **TINY)).double().eval()
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    maps, pooled = reference_convnext(net.state_dict(), x, TINY["depths"])
    features = net.features(x)
    assert len(features) == 4 == len(net.feature_channels) == len(net.feature_strides)
    for got, want, channels, stride in zip(
        features, maps, net.feature_channels, net.feature_strides, strict=True
    ):
        assert got.shape == (2, channels, *(s // stride for s in size))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(net(x), pooled, rtol=1e-9, atol=1e-9)
    assert net(x).shape == (2, net.out_dim) and net.out_dim == TINY["dims"][-1]
    cls, tokens = net.tokens(x)
    assert cls is None
    torch.testing.assert_close(tokens, maps[-1].flatten(2).transpose(1, 2))
    assert net.spatial_dims == spatial_dims and net.feature_strides == (4, 8, 16, 32)


def convnext_parameter_count(in_channels, depths, dims, kernel_volume_of):
    """Parameters by formula: stem conv + LN, per block 8 d^2 (pointwise MLP) + (k^dims + 1) d (depthwise)
    + 2 d (LN) + 4 d + d (MLP biases) + d (gamma), down-sampling LN + conv, final LN."""
    stem = in_channels * dims[0] * kernel_volume_of(4) + dims[0] + 2 * dims[0]
    blocks = sum(
        depth * (8 * d * d + (kernel_volume_of(7) + 1) * d + 2 * d + 5 * d + d)
        for depth, d in zip(depths, dims, strict=True)
    )
    downs = sum(2 * a + a * b * kernel_volume_of(2) + b for a, b in zip(dims[:3], dims[1:], strict=True))
    return stem + blocks + downs + 2 * dims[-1]


# Paper Table 1 (ImageNet-1K, 224 px, 1000-class head): ConvNeXt-T 28M, -S 50M, -B 89M.
PAPER_MILLIONS = {"tiny": 28, "small": 50, "base": 89}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parameter_counts(variant):
    depths, dims = VARIANTS[variant]
    with torch.device("meta"):
        net2d = ConvNeXt(in_channels=3, spatial_dims=2, variant=variant)
        net3d = ConvNeXt(in_channels=1, spatial_dims=3, variant=variant)
    count2d = sum(p.numel() for p in net2d.parameters())
    assert count2d == convnext_parameter_count(3, depths, dims, lambda k: k**2)
    assert sum(p.numel() for p in net3d.parameters()) == convnext_parameter_count(
        1, depths, dims, lambda k: k**3
    )
    with_head = count2d + dims[-1] * 1000 + 1000
    assert abs(with_head / 1e6 - PAPER_MILLIONS[variant]) < 0.7
    if variant == "tiny":
        assert round(count2d / 1e5) == 278  # 27.8M without the head


def test_gradients_reach_every_parameter():
    net = ConvNeXt(in_channels=1, spatial_dims=2, drop_path_rate=0.1, **TINY)
    net(torch.randn(2, 1, 64, 64)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_drop_path_rates_rise_linearly_and_only_train():
    net = ConvNeXt(in_channels=1, drop_path_rate=0.4, depths=(1, 1, 1, 2), dims=(8, 8, 8, 8))
    blocks = [b for stage in net.stages for b in stage]
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4]
    )
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    assert not torch.equal(net(x), net(x))  # training: blocks dropped at random per sample
    net.eval()
    assert torch.equal(net(x), net(x))


def test_bad_inputs_raise_clear_errors():
    net = ConvNeXt(in_channels=1, spatial_dims=2, **TINY)
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.zeros(1, 1, 64, 48))
    with pytest.raises(ValueError, match=r"expects input \(B, 1"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expects input \(B, 1"):
        net(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="unknown variant"):
        ConvNeXt(variant="huge")
    with pytest.raises(ValueError, match="4 entries"):
        ConvNeXt(depths=(1, 1, 1), dims=(8, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvNeXt(spatial_dims=1)


def test_key_names_and_encoder_file_round_trip(tmp_path):
    config = {"in_channels": 1, "spatial_dims": 3, "depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
    net = randomised(ConvNeXt(**config))
    keys = set(net.state_dict())
    assert {
        "downsample_layers.0.0.weight",
        "downsample_layers.0.1.bias",
        "downsample_layers.3.1.weight",
    } <= keys
    assert {
        "stages.3.0.dwconv.weight",
        "stages.0.0.pwconv1.weight",
        "stages.2.0.gamma",
        "norm.weight",
    } <= keys
    path = save_encoder(net, tmp_path / "encoder.pt", encoder="convnext", encoder_config=config)
    loaded = build_encoder("convnext", path, **config)
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.equal(loaded(x), net.eval()(x))


def test_torchscript_export_matches_eager():
    net = randomised(ConvNeXt(in_channels=1, **TINY)).eval()
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(torch.jit.script(net)(x), net(x))
    assert torch.equal(torch.jit.trace(net, x)(x), net(x))
