"""MoCo v3 (Chen, Xie, He 2021, Sec. 3, Algorithm 1): a query encoder learns to predict, for each of two
views, the momentum encoder's key of the other view, against the keys of the rest of the batch.

- query branch: Swin encoder -> projector (3-layer MLP, hidden 4096, out 256, batch norm after every
  layer, the last one without affine parameters) -> predictor (2-layer MLP, hidden 4096, out 256, batch
  norm after the hidden layer), as in the official code's ``_build_mlp``;
- momentum branch: an EMA copy of encoder + projector (``momentum_encoder``, ``momentum_projector``),
  updated after each step with the momentum the schedule sets (0.99 -> 1 by a cosine, App. A);
- loss: ``ctr(q1, k2) + ctr(q2, k1)`` (:mod:`common.losses.moco`), keys gathered over processes.

Both views go through the (batch-norm free) Swin encoder as one batch; the MLP heads see one view at a
time, so their batch norm statistics are per view as in the official code. MoCo v3 evaluates the base
(query) encoder (the official ``main_lincls.py`` loads ``base_encoder``), so :meth:`export_encoder`
returns ``encoder``, not the momentum copy.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses.moco import symmetric_ctr
from ..networks.heads import mlp
from ..networks.swin import SwinEncoder
from .base import SSLMethod, make_teacher, views


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v3's projection head: 3 layers with batch norm, and a final batch norm without affine."""
    return nn.Sequential(
        mlp(in_dim, hidden_dim, out_dim, 3, batch_norm=True), nn.BatchNorm1d(out_dim, affine=False)
    )


class MoCoV3(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        mlp_hidden_dim: int = 4096,
        projection_dim: int = 256,
        temperature: float = 0.2,
        momentum: float = 0.99,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.projector = projector(self.encoder.out_dim, mlp_hidden_dim, projection_dim)
        self.predictor = mlp(projection_dim, mlp_hidden_dim, projection_dim, 2, batch_norm=True)
        self.momentum_encoder = make_teacher(self.encoder)
        self.momentum_projector = make_teacher(self.projector)
        self.temperature, self.momentum = temperature, momentum

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]

    def export_encoder(self) -> nn.Module:
        """The query encoder, which MoCo v3 evaluates (see the module docstring)."""
        return self.encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first, second = views(batch, "global")
        both = torch.cat([first, second])
        q1, q2 = (self.predictor(self.projector(h)) for h in self.encoder(both).chunk(2))
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(h) for h in self.momentum_encoder(both).chunk(2))
        loss = symmetric_ctr(q1, q2, k1, k2, self.temperature)
        return {"loss": loss, "contrastive": loss.detach()}
