"""MoCo v3's contrastive loss (Chen, Xie, He 2021, Sec. 3, Algorithm 1).

A query ``q`` (query encoder + projector + predictor) is matched against the keys ``k`` of the momentum
encoder: InfoNCE with the key of the same sample as the positive and the keys of every other sample of the
(global) batch as negatives,

    ctr(q, k) = CrossEntropy(q_norm @ k_norm.T / tau, labels) * 2 * tau,

the factor ``2 * tau`` as in Algorithm 1 (it makes the loss less sensitive to ``tau``). When
``torch.distributed`` is initialised, the keys of all processes are gathered (no gradient flows to keys),
so rank ``r``'s positives sit at ``r * N + arange(N)``. The total is symmetrised over the two views:
``ctr(q1, k2) + ctr(q2, k1)``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gathered_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The keys of every process, concatenated in rank order, and the row where this rank's keys start
    (``k`` itself and 0 outside ``torch.distributed``). Every rank must hold the same number of keys."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return k, 0
    parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, k.detach().contiguous())
    return torch.cat(parts), dist.get_rank() * k.shape[0]


def ctr(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """``ctr`` of Algorithm 1: ``q`` ``(N, D)`` queries, ``k`` ``(N, D)`` keys (treated as constants)."""
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    keys, offset = gathered_keys(F.normalize(k.detach(), dim=1))
    logits = F.normalize(q, dim=1) @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


def symmetric_ctr(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """MoCo v3's loss for two views (Algorithm 1): ``ctr(q1, k2) + ctr(q2, k1)``."""
    return ctr(q1, k2, temperature) + ctr(q2, k1, temperature)
