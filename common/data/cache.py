"""Where fetched and prepared data live: one directory, set by ``MEDFM_CACHE``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MEDFM_CACHE"
DATA_LISTS_DIR = Path(__file__).resolve().parents[2] / "data_lists"


def cache_root() -> Path:
    """``$MEDFM_CACHE``, by default ``~/.cache/medfm-bundles``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medfm-bundles")


def dataset_dir() -> Path:
    """The directory that datalist paths are relative to (prepared NIfTI files)."""
    return cache_root() / "prepared"
