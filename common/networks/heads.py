"""Projection heads of the self-supervised methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, batch_norm: bool = False
) -> nn.Sequential:
    """``num_layers`` linear layers with GELU (and batch norm) between them; the last one is bare."""
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < num_layers - 1:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def trunc_normal_init_(
    module: nn.Module, std: float = 0.02, types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> None:
    """The weight of a module of ``types`` (by default linear layers) drawn from a normal of std ``std``
    truncated at +-2, its bias set to 0: the initialisation of DINO's head (Caron et al. 2021,
    ``DINOHead._init_weights``), of the ViT of DINOv2 and of ConvNeXt (``types`` with the convolutions);
    other modules are left as they are. Meant for ``module.apply``."""
    if isinstance(module, types):
        nn.init.trunc_normal_(module.weight, std=std, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, Sec. 3.1 and App.): an MLP of ``num_layers`` layers
    (hidden ``hidden_dim``) to a ``bottleneck_dim`` vector, l2-normalised, then a weight-normalised linear
    layer without bias to ``out_dim`` logits. With ``norm_last_layer`` the weight norm's magnitude is
    fixed to 1 (the paper's choice for stability).

    Initialisation as in DINO's code (``DINOHead._init_weights``, which iBOT's head inherits): the MLP's
    linear weights truncated normal with std 0.02 (:func:`trunc_normal_init_`), biases 0; the last layer
    keeps PyTorch's default initialisation, its magnitude set to 1. That last layer is the one
    :class:`~common.engines.FreezeLastLayerHandler` keeps fixed during the first epoch(s)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, num_layers)
        self.mlp.apply(trunc_normal_init_)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
