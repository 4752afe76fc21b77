"""Decathlon datalists: reading keys with clear errors, deterministic few-shot splits."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_path


def write_json(data, path: str | os.PathLike, default=None) -> Path:
    """Write ``data`` as indented JSON atomically (:func:`common.atomic.atomic_path`); ``default`` as
    :func:`json.dumps`' (e.g. ``str`` for paths). Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=default) + "\n")
    return Path(path)


def read_key(datalist_path: str | os.PathLike, key: str) -> list[dict]:
    """The item list under ``key``, or a KeyError naming the file, the key and the keys it has."""
    data = json.loads(Path(datalist_path).read_text())
    if key not in data:
        raise KeyError(f"{datalist_path}: no key {key!r} (keys: {sorted(data)})")
    return data[key]


def fewshot_split(
    items: Sequence[dict], shots: int | None = None, fraction: float | None = None, seed: int = 0
):
    """A seeded subset of ``items``: ``shots`` items, or ``ceil``-free ``round(fraction * n)`` (at least one).

    The same items, shots/fraction and seed always give the same subset, whatever the input order.
    """
    if (shots is None) == (fraction is None):
        raise ValueError("give exactly one of shots or fraction")
    ordered = sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        shots = max(1, round(fraction * len(ordered)))
    if not 1 <= shots <= len(ordered):
        raise ValueError(f"cannot take {shots} shots from {len(ordered)} items")
    return random.Random(seed).sample(ordered, shots)


def fewshot_key(key: str, shots: int | None = None, fraction: float | None = None, seed: int = 0) -> str:
    """``training_2shot_seed0`` or ``training_10pct_seed1``."""
    size = f"{shots}shot" if shots is not None else f"{round(fraction * 100)}pct"
    return f"{key}_{size}_seed{seed}"


def add_fewshot_keys(
    datalist_path: str | os.PathLike,
    key: str = "training",
    shots: Sequence[int] = (),
    fractions: Sequence[float] = (),
    seeds: Sequence[int] = (0,),
) -> list[str]:
    """Add one key per (shots or fraction, seed) to the datalist file; return the keys written."""
    path = Path(datalist_path)
    data = json.loads(path.read_text())
    items = read_key(path, key)
    written = []
    for seed in seeds:
        for n in shots:
            data[fewshot_key(key, shots=n, seed=seed)] = fewshot_split(items, shots=n, seed=seed)
            written.append(fewshot_key(key, shots=n, seed=seed))
        for fraction in fractions:
            data[fewshot_key(key, fraction=fraction, seed=seed)] = fewshot_split(
                items, fraction=fraction, seed=seed
            )
            written.append(fewshot_key(key, fraction=fraction, seed=seed))
    write_json(data, path)
    return written
