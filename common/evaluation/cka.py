"""Centred kernel alignment (CKA) between layers of two networks, e.g. pre-trained vs fine-tuned encoder.

Linear CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019, Sec. 3: CKA as normalised HSIC, with linear kernels) compares the representations ``X``
(n x p) and ``Y`` (n x q) of the same n inputs; it is invariant to orthogonal transforms and isotropic
scaling of either representation, but not to arbitrary invertible linear maps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .figures import new_figure, save_figure


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _gram_frobenius(xc: torch.Tensor) -> torch.Tensor:
    """``||Xc^T Xc||_F`` computed on the smaller of the p x p and n x n Gram matrices (equal norms)."""
    n, p = xc.shape
    gram = xc.T @ xc if p <= n else xc @ xc.T
    return torch.linalg.matrix_norm(gram)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` (Kornblith et al. 2019, Sec. 3).

    ``x`` (n, p) and ``y`` (n, q) are features of the same n inputs (rows); ``Xc``, ``Yc`` have their
    columns centred. Equivalently, with ``K = X X^T``, ``L = Y Y^T`` and ``H = I - 11^T/n``:
    ``CKA = tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` (normalised HSIC). Computed in float64; for
    wide features (p q > n^2) through the n x n Gram matrices ``<Xc Xc^T, Yc Yc^T>_F``, which is
    exact and avoids the p x q cross-covariance. Returns NaN when either representation is constant
    over the inputs (zero denominator). ValueError when the numbers of inputs differ or n < 2.
    """
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"features must be 2-D (n, features), got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features come from different numbers of inputs: {x.shape[0]} vs {y.shape[0]}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"CKA needs at least 2 inputs, got {n}")
    xc, yc = _centred(x), _centred(y)
    p, q = xc.shape[1], yc.shape[1]
    if p * q <= n * n:
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    else:
        cross = ((xc @ xc.T) * (yc @ yc.T)).sum()
    denominator = _gram_frobenius(xc) * _gram_frobenius(yc)
    if denominator == 0:
        return float("nan")
    return float(cross / denominator)


def _as_matrix(features: torch.Tensor, pool: bool) -> torch.Tensor:
    """(n, ...) features as (n, features): global average pooling over dims 2.. when ``pool``, flattened."""
    if features.ndim == 1:
        return features.reshape(-1, 1)
    if pool and features.ndim > 2:
        features = features.double().mean(dim=tuple(range(2, features.ndim)))
    return features.reshape(features.shape[0], -1)


def layerwise_cka(
    features_a: Mapping[str, torch.Tensor], features_b: Mapping[str, torch.Tensor], pool: bool = False
) -> dict[str, float]:
    """Linear CKA per layer name present in both mappings (in the order of ``features_a``).

    Features of shape (n, ...) are flattened per input; with ``pool``, conv maps (n, c, *spatial) are
    first globally average-pooled over the spatial dims to (n, c), which compares channel statistics
    and ignores spatial layout (much cheaper for 3-D maps). ValueError if no layer name is shared.
    """
    common = [name for name in features_a if name in features_b]
    if not common:
        raise ValueError(f"no layer names in common: {sorted(features_a)[:10]} vs {sorted(features_b)[:10]}")
    return {
        name: linear_cka(_as_matrix(features_a[name], pool), _as_matrix(features_b[name], pool))
        for name in common
    }


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def collect_features(
    network: nn.Module, inputs: torch.Tensor, layer_names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules on one forward pass of ``inputs`` (eval mode, no_grad).

    Forward hooks are registered on ``dict(network.named_modules())[name]``; each stores the module's
    output (detached, on the CPU); tuple/list outputs contribute their first tensor, and a module called
    several times keeps its first output. The training flag of every module is restored afterwards and
    the hooks are removed, also when the forward pass fails. KeyError (listing available names) for an
    unknown name, RuntimeError for a named module the forward pass never reached.
    """
    names = list(dict.fromkeys(layer_names))
    modules = dict(network.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        available = [name for name in modules if name]
        shown = ", ".join(available[:15]) + (
            f", ... ({len(available)} in all)" if len(available) > 15 else ""
        )
        raise KeyError(f"unknown layer name(s) {unknown}; available: {shown}")

    features: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if name in features:
                return
            tensor = _first_tensor(output)
            if tensor is None:
                raise TypeError(f"layer {name!r} returned no tensor ({type(output).__name__})")
            features[name] = tensor.detach().cpu()

        return hook

    modes = [(module, module.training) for module in network.modules()]
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        network.eval()
        with torch.no_grad():
            network(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    missing = [name for name in names if name not in features]
    if missing:
        raise RuntimeError(f"the forward pass did not reach layer(s) {missing}")
    return {name: features[name] for name in names}


def plot_cka(values: Mapping[str, float], path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart (PNG) of CKA per layer, written atomically (temporary file, then ``os.replace``)."""
    if not values:
        raise ValueError("no CKA values to plot")
    names, heights = list(values), [float(v) for v in values.values()]
    fig = new_figure((max(4.0, 0.5 * len(names) + 1.5), 3.8))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), heights, color="tab:blue")
    ax.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="linear CKA", ylim=(0, 1.1), title=title)
    fig.tight_layout()
    return save_figure(fig, path)
