"""Helpers that bundle configs call to locate themselves and the repository's shared files."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def bundle_root(name: str) -> str:
    """The directory of bundle ``name``.

    Configs use it for ``bundle_root`` so that ``python -m monai.bundle run training --config_file
    bundles/<name>/configs/train.json`` works from the repository root, from inside the bundle directory,
    and from anywhere else; tools that copy a bundle (MONAI Label) override ``bundle_root`` themselves.
    """
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    for base in (cwd, REPO_ROOT):
        candidate = base / "bundles" / name
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(f"bundle {name!r} not found in {cwd} nor in {REPO_ROOT / 'bundles'}")


def class_names(datalist_file: str) -> list[str]:
    """Class names, ordered by label value, from a Decathlon datalist's ``labels`` entry."""
    with open(datalist_file) as f:
        labels = json.load(f).get("labels")
    if not labels:
        raise KeyError(f"{datalist_file}: no 'labels' entry naming the classes")
    return [labels[str(i)] for i in range(len(labels))]
