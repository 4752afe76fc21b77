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


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, Sec. 3.1 and App.): an MLP of ``num_layers`` layers
    (hidden ``hidden_dim``) to a ``bottleneck_dim`` vector, l2-normalised, then a weight-normalised linear
    layer without bias to ``out_dim`` logits. With ``norm_last_layer`` the weight norm's magnitude is
    fixed to 1 (the paper's choice for stability)."""

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
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
