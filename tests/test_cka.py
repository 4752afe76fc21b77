"""Linear CKA: invariances, a brute-force HSIC reference, feature collection with hooks, the plot."""

import math

import pytest
import torch
from torch import nn

from common.evaluation.cka import collect_features, layerwise_cka, linear_cka, plot_cka


def _random(n, p, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force_cka(x, y):
    """``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))``, K = X X^T, L = Y Y^T, H = I - 11^T/n, by loops."""
    x, y = x.tolist(), y.tolist()
    n = len(x)

    def gram(f):
        return [[sum(a * b for a, b in zip(f[i], f[j], strict=True)) for j in range(n)] for i in range(n)]

    def matmul(a, b):
        return [[sum(a[i][k] * b[k][j] for k in range(n)) for j in range(n)] for i in range(n)]

    def trace(a):
        return sum(a[i][i] for i in range(n))

    h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]
    k, l_ = gram(x), gram(y)
    kh, lh = matmul(k, h), matmul(l_, h)
    return trace(matmul(kh, lh)) / math.sqrt(trace(matmul(kh, kh)) * trace(matmul(lh, lh)))


def test_self_similarity_and_invariances():
    x = _random(50, 8)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(_random(8, 8, seed=1))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # centring removes offsets
    y = _random(50, 5, seed=2)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert linear_cka(x.float(), y.float()) == pytest.approx(linear_cka(x, y), abs=1e-6)


def test_independent_features_near_zero():
    assert linear_cka(_random(2000, 10, seed=3), _random(2000, 10, seed=4)) < 0.05


def test_not_invariant_to_anisotropic_scaling():
    # X = [u, v] with centred orthonormal columns; Y = X diag(1, s). K = uu^T + vv^T, L = uu^T + s^2 vv^T,
    # so CKA = (1 + s^2) / sqrt(2 (1 + s^4)) < 1 for s != 1 (Cauchy-Schwarz): 0.714 for s = 10.
    raw = _random(30, 2, seed=5)
    x, _ = torch.linalg.qr(raw - raw.mean(dim=0))
    s = 10.0
    expected = (1 + s**2) / math.sqrt(2 * (1 + s**4))
    assert linear_cka(x, x * torch.tensor([1.0, s], dtype=torch.float64)) == pytest.approx(
        expected, abs=1e-10
    )
    assert expected < 0.72


@pytest.mark.parametrize("p, q", [(3, 4), (40, 60)])  # cross-covariance and n x n Gram routes
def test_matches_brute_force_hsic(p, q):
    x, y = _random(7, p, seed=6), _random(7, q, seed=7)
    y[:, 0] += 2 * x[:, 0]  # some shared signal
    assert linear_cka(x, y) == pytest.approx(_brute_force_cka(x, y), abs=1e-10)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="different numbers of inputs"):
        linear_cka(_random(5, 3), _random(6, 3))
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(_random(1, 3), _random(1, 3))
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(torch.zeros(4, 2, 2), torch.zeros(4, 4))
    assert math.isnan(linear_cka(torch.ones(4, 3), _random(4, 2)))


def test_layerwise_cka_flatten_and_pool():
    maps = torch.randn(6, 3, 4, 4, 4, generator=torch.Generator().manual_seed(8))
    a = {"enc1": maps, "enc2": maps.mean(dim=(2, 3, 4)), "only_a": maps}
    # enc1 of b: each input's map circularly shifted by a different amount (per-channel means unchanged).
    shifted = torch.stack([m.roll(i, dims=-1) for i, m in enumerate(maps)])
    b = {"enc2": 2.0 * a["enc2"], "enc1": shifted, "only_b": maps}
    flat = layerwise_cka(a, b)
    assert list(flat) == ["enc1", "enc2"]
    assert flat["enc2"] == pytest.approx(1.0, abs=1e-10)
    assert flat["enc1"] < 0.99  # flattening keeps spatial layout, which the shifts change
    pooled = layerwise_cka(a, b, pool=True)
    assert pooled["enc1"] == pytest.approx(1.0, abs=1e-10)  # global average pooling ignores the shifts
    with pytest.raises(ValueError, match="no layer names in common"):
        layerwise_cka({"x": maps}, {"y": maps})


class _TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, "aux"


def _small_net():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        _TupleOut(),
    )


def _no_hooks(network):
    return all(not module._forward_hooks for module in network.modules())


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _small_net()

    def forward(self, x):
        return self.body(x)[0]


def test_collect_features_sequential():
    network = _Wrapper()
    network.train()
    network.body[1].eval()  # a mixed-mode network (frozen BatchNorm) is restored module by module
    x = torch.randn(3, 1, 6, 6, 6)
    features = collect_features(network, x, ["body.0", "body.2", "body.3"])
    assert list(features) == ["body.0", "body.2", "body.3"]
    assert all(f.shape == (3, 4, 6, 6, 6) for f in features.values())
    assert not any(f.requires_grad for f in features.values())
    assert torch.allclose(features["body.3"], 2 * features["body.2"])  # first tensor of a tuple output
    assert _no_hooks(network)
    assert network.training and network.body[0].training and not network.body[1].training


def test_collect_features_monai_unet():
    from monai.networks.nets import UNet

    network = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0
    )
    features = collect_features(network, torch.randn(2, 1, 16, 16, 16), ["model.0", "model.1.submodule"])
    assert features["model.0"].shape == (2, 4, 8, 8, 8)
    assert features["model.1.submodule"].shape == (2, 8, 8, 8, 8)
    assert _no_hooks(network) and network.training
    values = layerwise_cka(features, features, pool=True)
    assert all(v == pytest.approx(1.0, abs=1e-10) for v in values.values())


def test_collect_features_errors_remove_hooks():
    network = _Wrapper()
    with pytest.raises(KeyError, match="body.0"):
        collect_features(network, torch.randn(1, 1, 4, 4, 4), ["body.9"])
    network.train()
    with pytest.raises(RuntimeError):  # wrong number of input channels fails inside the forward pass
        collect_features(network, torch.randn(1, 2, 4, 4, 4), ["body.0", "body.2"])
    assert _no_hooks(network) and network.training


def test_plot_cka(tmp_path):
    out = plot_cka(
        {"enc1": 0.93, "enc2": 0.71, "bottleneck": 0.42}, tmp_path / "figs" / "cka.png", "SSL vs FT"
    )
    assert out == tmp_path / "figs" / "cka.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["cka.png"]  # no temporary file left
    with pytest.raises(ValueError):
        plot_cka({}, tmp_path / "empty.png")
