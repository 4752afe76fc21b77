"""Coda's inter-organ supervised-contrastive loss (papers/000, Sec. 2, Eq. 1), with Khosla et al.'s standard
SupCon (NeurIPS 2020, Eq. 2, "L_out") as an option.

For an anchor ``i`` with organ label ``y_i``, positives ``P(i)`` are the other samples of the same organ and
negatives ``N(i)`` the samples of other organs; embeddings ``z`` are l2-normalised:

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{n in N(i)} exp(z_i.z_n / tau) )

Coda's denominator sums over the negatives only (``denominator="negatives"``, the paper's equation);
standard SupCon sums over every sample but the anchor (``denominator="all"``). An anchor without a positive
contributes nothing (``-1/|P(i)|`` is undefined), and with the negatives-only denominator neither does an
anchor without a negative (an empty sum). The loss is the mean over the anchors that remain, and zero (still
attached to the graph) when none does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DENOMINATORS = ("negatives", "all")


def supervised_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    num_anchors: int | None = None,
    denominator: str = "negatives",
) -> torch.Tensor:
    """Mean of ``L_i`` over the valid anchors.

    Args:
        embeddings: ``(M, D)`` embeddings of the multi-viewed batch (normalised here).
        labels: ``(M,)`` integer organ labels.
        temperature: ``tau``.
        num_anchors: the first ``num_anchors`` rows are the anchors (default: all rows, Coda's Eq. 1: "any
            sample within the multi-viewed batch"; Coda's ``anchors="student"`` passes the student rows'
            count); every row is a candidate positive or negative, except the anchor itself. Rows computed
            without gradient (Coda's teacher rows) may be anchors: their terms pull the other rows.
        denominator: ``"negatives"`` (Coda, Eq. 1) or ``"all"`` (standard SupCon).
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"expected embeddings (M, D) and labels (M,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    z = F.normalize(embeddings.float(), dim=-1)
    num_anchors = z.shape[0] if num_anchors is None else num_anchors
    logits = z[:num_anchors] @ z.T / temperature
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[:, :num_anchors].fill_diagonal_(True)
    same = labels[:num_anchors, None] == labels[None, :]
    positive, negative = same & ~is_self, ~same
    kept = negative if denominator == "negatives" else ~is_self
    log_denominator = torch.logsumexp(logits.masked_fill(~kept, float("-inf")), dim=1)
    valid = positive.any(1) & kept.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    mean_positive_logit = (logits * positive).sum(1)[valid] / positive.sum(1)[valid]
    return (log_denominator[valid] - mean_positive_logit).mean()
