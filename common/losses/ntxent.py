"""SimCLR's normalised temperature-scaled cross-entropy loss, NT-Xent (Chen et al. 2020, Sec. 2.1, Eq. 1).

For a batch of ``N`` samples with two views each, the ``2N`` projections are l2-normalised and compared
by cosine similarity. Anchor ``i`` has one positive, the other view ``j`` of its sample, and ``2(N - 1)``
negatives, the views of the other samples:

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) ),

and the loss is the mean of ``l(i, j)`` over all ``2N`` anchors (both orders of every positive pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``z1``, ``z2``: ``(N, D)`` projections of the two views; row ``n`` of each is sample ``n``."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    self_similarity = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_similarity, float("-inf"))  # the sum runs over k != i
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)
