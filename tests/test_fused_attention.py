"""Network-level performance options (issue 21, item 2): fused Swin window attention and channels-last,
exact against MONAI's default path (fp32, <= 1e-5) with identical state dicts."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from common.networks import build_encoder, build_encoder_segmenter, build_segmenter, save_encoder
from common.networks.fused_attention import FusedWindowAttention, use_fused_attention
from common.networks.memory_format import use_channels_last

TOL = 1e-5


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _scaled_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``_max_diff`` relative to ``a``'s largest magnitude where that exceeds 1 (fp32 rounding scales
    with the values: a convolution's sum order differs between layouts)."""
    return _max_diff(a, b) / max(1.0, a.abs().max().item())


def _grads_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest gradient difference, relative to the gradient's scale where that exceeds 1 (a gradient summed
    over many windows, e.g. the bias table's, carries fp32 rounding of that sum)."""
    pairs = [
        (p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters(), strict=True) if p.grad is not None
    ]
    assert pairs, "no gradients to compare"
    return max(_scaled_diff(g, h) for g, h in pairs)


def _reference_attention(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Swin Eq. 4 written out: SoftMax(Q K^T * scale + B (+ shift mask)) V, then the output projection."""
    b, n, c = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    index = attn.relative_position_index[:n, :n].reshape(-1)
    bias = attn.relative_position_bias_table[index].reshape(n, n, h).permute(2, 0, 1)
    logits = q @ k.transpose(-2, -1) * attn.scale + bias
    if mask is not None:
        logits = logits + mask.repeat(b // mask.shape[0], 1, 1)[:, None]
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def _flat(output) -> torch.Tensor:
    """A network's output as one tensor (the Swin encoder returns its five hidden states)."""
    return torch.cat([h.flatten() for h in output]) if isinstance(output, (list, tuple)) else output


@pytest.mark.parametrize("window", [(7, 7), (7, 7, 7), (4, 4, 4)])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_window_attention_matches_monai_and_eq4(window, masked):
    torch.manual_seed(0)
    monai_attn = WindowAttention(24, 3, window, qkv_bias=True)
    fused = FusedWindowAttention(24, 3, window, qkv_bias=True)
    fused.load_state_dict(monai_attn.state_dict())
    n = 1
    for w in window:
        n *= w
    mask = None
    if masked:  # MONAI's own shift mask of an image of two windows per axis, shifted by half a window
        grid = tuple(2 * w for w in window)
        mask = compute_mask(grid, window, tuple(w // 2 for w in window), torch.device("cpu"))
        assert mask.shape == (2 ** len(window), n, n) and (mask == -100).any()
    windows = 2 * (mask.shape[0] if masked else 3)  # two images' windows
    x = torch.randn(windows, n, 24)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fused = monai_attn(x_ref, mask), fused(x_fused, mask)
    assert _max_diff(out_ref, out_fused) <= TOL
    assert _max_diff(out_ref, _reference_attention(monai_attn, x, mask)) <= TOL
    weight = torch.randn_like(out_ref)
    (out_ref * weight).sum().backward()
    (out_fused * weight).sum().backward()
    assert _max_diff(x_ref.grad, x_fused.grad) <= TOL
    assert _grads_diff(monai_attn, fused) <= TOL
    assert fused.relative_position_bias_table.grad.abs().sum() > 0


def test_fused_attention_masks_across_regions():
    """The shift mask is applied: changing a token of another region leaves a token's output unchanged."""
    torch.manual_seed(0)
    fused = FusedWindowAttention(12, 3, (4, 4)).eval()
    mask = compute_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"))
    x = torch.randn(4, 16, 12)
    last = mask.shape[0] - 1  # the corner window mixes four regions
    other = int((mask[last, 0] == -100).nonzero()[0])
    y = x.clone()
    y[last, other] += 10.0
    assert _max_diff(fused(x, mask)[last, 0], fused(y, mask)[last, 0]) <= TOL
    assert _max_diff(fused(x, None)[last, 0], fused(y, None)[last, 0]) > 1e-3


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_fused_swinunetr_equals_monai(spatial_dims):
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=spatial_dims)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = copy.deepcopy(net)
    parameters = list(fused.parameters())
    assert use_fused_attention(fused) == 8  # 4 stages x 2 blocks, shifted and unshifted
    assert use_fused_attention(fused) == 0  # idempotent
    assert sum(isinstance(m, FusedWindowAttention) for m in fused.modules()) == 8
    assert list(fused.parameters()) == parameters  # the same tensors: an existing optimiser keeps working
    after = fused.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    if spatial_dims == 3:  # the Swin encoder alone at 32³ (the decoder's instance norm needs 64³, and has
        # no attention): stages at 16³, 8³ use shifted windows (> window 7), 4³ and 2³ unshifted ones
        net, fused, x = net.swinViT, fused.swinViT, torch.randn(1, 1, 32, 32, 32)
    else:
        x = torch.randn(1, 1, 64, 64)
    out, out_fused = _flat(net(x)), _flat(fused(x))
    assert _max_diff(out, out_fused) <= TOL
    out.square().mean().backward()
    out_fused.square().mean().backward()
    assert _grads_diff(net, fused) <= TOL


def test_state_dict_round_trips_and_encoder_files_load(tmp_path):
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    fused = build_segmenter("swinunetr", 1, 2, feature_size=12, fused_attention=True)
    fused.load_state_dict(net.state_dict())  # strict: MONAI's keys load unchanged
    back = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    back.load_state_dict(fused.state_dict())
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())
    # an encoder file written from an unfused encoder loads into a fused one, and vice versa
    path = save_encoder(build_encoder("swin", feature_size=12), tmp_path / "encoder.pt")
    encoder = build_encoder("swin", path, feature_size=12, fused_attention=True)
    assert sum(isinstance(m, FusedWindowAttention) for m in encoder.modules()) == 8
    save_encoder(encoder, tmp_path / "fused.pt")
    assert build_encoder("swin", tmp_path / "fused.pt", feature_size=12) is not None


def test_traced_fused_swinunetr_matches_eager():
    torch.manual_seed(0)
    # the Swin encoder is the part the bundles trace (common.bundle_export.TRACED_MODULES); at 32³ its
    # stages at 16³ and 8³ use shifted windows, those at 4³ and 2³ unshifted ones
    net = build_segmenter("swinunetr", 1, 2, feature_size=12, fused_attention=True).swinViT.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, x)
        eager = net(x)
        for _ in range(2):  # the second call runs TorchScript's optimised graph
            assert _max_diff(_flat(traced(x)), _flat(eager)) <= TOL


def _channels_last_case(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "convnext_unet":  # ConvNeXt-3D encoder under the collection's U-Net decoder
        config = {"spatial_dims": 3, "depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}
        return build_encoder_segmenter("convnext", config, 2, (32, 32, 32)), torch.randn(2, 1, 32, 32, 32)
    if name == "convnext_2d":
        net = build_encoder("convnext", spatial_dims=2, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
        return net, torch.randn(2, 1, 64, 64)
    return build_segmenter(name, 1, 2, feature_size=8), torch.randn(2, 1, 32, 32, 32)


@pytest.mark.parametrize("name", ["unet", "segresnet", "convnext_unet", "convnext_2d"])
def test_channels_last_equals_default_layout(name):
    torch.manual_seed(0)
    net, x = _channels_last_case(name)
    converted = use_channels_last(copy.deepcopy(net), x.dim() - 2)
    conv_weights = [p for p in converted.parameters() if p.dim() == x.dim()]
    layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    assert conv_weights and all(p.is_contiguous(memory_format=layout) for p in conv_weights)
    assert list(converted.state_dict()) == list(net.state_dict())
    out, out_converted = net(x), converted(x)
    assert _scaled_diff(out, out_converted) <= TOL
    out.square().mean().backward()
    out_converted.square().mean().backward()
    assert _grads_diff(net, converted) <= TOL


def test_builder_switches():
    unet = build_segmenter("unet", 1, 2, feature_size=8, channels_last=True)
    assert next(p for p in unet.parameters() if p.dim() == 5).is_contiguous(
        memory_format=torch.channels_last_3d
    )
    with pytest.raises(ValueError, match="fused_attention.*no Swin window attention"):
        build_segmenter("unet", 1, 2, feature_size=8, fused_attention=True)
    frozen = build_segmenter("frozen_swin_linear", 1, 2, feature_size=12, fused_attention=True)
    assert sum(isinstance(m, FusedWindowAttention) for m in frozen.modules()) == 8
    assert not any(type(m) is WindowAttention for m in frozen.modules())
    config = {"feature_size": 12, "fused_attention": True}  # a segmentation bundle's encoder_config
    transfer = build_encoder_segmenter("swin", config, 2, (64, 64, 64))
    assert sum(isinstance(m, FusedWindowAttention) for m in transfer.modules()) == 8
