"""Schedules over training iterations (DINO, Caron et al. 2021, implementation details; iBOT; SMIT).

- learning rate: linear warm-up from 0, then cosine decay to a final value;
- weight decay: cosine from a start to an end value;
- EMA momentum: cosine from ``m0`` to 1;
- teacher temperature: linear warm-up from a start to a final value, then constant.
"""

from __future__ import annotations

import math


def cosine(start: float, end: float, step: int, total: int) -> float:
    """``end + (start - end) * (1 + cos(pi * step / total)) / 2``, clamped to ``step`` in [0, total]."""
    if total <= 0:
        return end
    t = min(max(step, 0), total) / total
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(base: float, final: float, step: int, total: int, warmup: int) -> float:
    """Linear from 0 to ``base`` over ``warmup`` steps, then :func:`cosine` from ``base`` to ``final``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return cosine(base, final, step - warmup, total - warmup)


def linear_warmup(start: float, final: float, step: int, warmup: int) -> float:
    """Linear from ``start`` to ``final`` over ``warmup`` steps, then ``final``."""
    if warmup <= 0 or step >= warmup:
        return final
    return start + (final - start) * step / warmup
