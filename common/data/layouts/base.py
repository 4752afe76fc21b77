"""Shared pieces of the layout readers: files and columns checked with clear errors, seeded splits,
the Decathlon datalist dict."""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path


def require(path: Path, what: str = "file") -> Path:
    """``path`` if it exists, else FileNotFoundError naming it and what it should be."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_json(path: Path, keys: Sequence[str]) -> dict:
    """The JSON object in ``path``; KeyError naming the file and each of ``keys`` it lacks."""
    data = json.loads(require(path, "JSON file").read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"{path}: missing key(s) {missing} (keys: {sorted(data)})")
    return data


def read_csv(path: Path, columns: Iterable[str], delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of the CSV file ``path``; KeyError naming the file and each of ``columns`` it lacks."""
    with open(require(path, "CSV file"), newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise KeyError(
                f"{path}: missing column(s) {missing} (columns: {header}, delimiter {delimiter!r})"
            )
        return list(reader)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, the form the bundles' ``dataset_dir`` resolves."""
    return os.path.relpath(path, root)


def split_groups(items: Sequence[dict], fraction: float, seed: int, key: str = "subject") -> dict:
    """``{"training": [...], "validation": [...]}``: ``items`` split so that a seeded ``fraction`` of the
    distinct groups (``item[key]``: subject, patient; at least one when there are two or more) is held out
    for validation, each group on one side."""
    ordered = sorted({item[key] for item in items})
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    count = min(max(1, round(fraction * len(ordered))), len(ordered) - 1) if fraction else 0
    held_out = set(random.Random(seed).sample(ordered, count))
    return {
        "training": [item for item in items if item[key] not in held_out],
        "validation": [item for item in items if item[key] in held_out],
    }


def datalist(name: str, description: str, **content) -> dict:
    """A Decathlon datalist dict: ``name``, ``description`` and the given keys (splits, labels, ...)."""
    return {"name": name, "description": description, **content}
