"""SimCLR (Chen et al. 2020): contrast two augmented views of each volume against the rest of the batch.

Each sample gives two random crops (``global_0``, ``global_1``); the Swin encoder ``f`` embeds them
(``h``, the average of the last stage's feature map) and a projection head ``g``, an MLP with one hidden
layer of the embedding's width (Sec. 2.1: ``z = W2 sigma(W1 h)``, here with GELU for sigma; 128 outputs,
Sec. 2.3), maps them to ``z``; the NT-Xent loss (Eq. 1) pulls the two views of a
sample together and pushes the other ``2(N - 1)`` views of the batch away. The head is dropped after
pre-training; the encoder ``f`` is exported.

Under ``DistributedDataParallel`` the negatives are those of each process's own batch (the paper gathers
them over all TPU cores); the encoder has no batch norm, and neither has the head (Sec. 2.1's ``g``).
"""

from __future__ import annotations

import torch

from ..losses.ntxent import nt_xent_loss
from ..networks.heads import mlp
from ..networks.swin import SwinEncoder
from .base import SSLMethod, views


class SimCLR(SSLMethod):
    """``projection_hidden_dim`` ``None`` means the encoder's embedding width (16 * ``feature_size``)."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        projection_hidden_dim: int | None = None,
        projection_dim: int = 128,
        temperature: float = 0.5,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        hidden = projection_hidden_dim or self.encoder.out_dim
        self.projector = mlp(self.encoder.out_dim, hidden, projection_dim, num_layers=2)
        self.temperature = temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first, second = views(batch, "global")
        z1, z2 = self.projector(self.encoder(torch.cat([first, second]))).chunk(2)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return {"loss": loss, "nt_xent": loss.detach()}
