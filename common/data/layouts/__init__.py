"""Datalist generators for the published directory layouts of public datasets, one module per layout.

``make_datalist("btcv", "/data/BTCV", out="data_lists/btcv.json", target="multiorgan_ct")`` returns (and
writes atomically) a Decathlon datalist with paths relative to ``root``: set the bundle's ``dataset_dir`` to
``root`` and ``datalist_file`` to ``out``. CT layouts take ``target`` (``multiorgan_ct`` / ``suprem_ct``) to
map their classes onto a bundle's class space (``labelmaps.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..datalists import write_json
from .abdomenatlas import abdomenatlas
from .amos import amos
from .btcv import btcv
from .chestxray14 import chestxray14
from .chexpert import chexpert
from .flare22 import flare22
from .labelmaps import merge_masks
from .mimic_cxr import mimic_cxr
from .msd import msd
from .totalsegmentator import totalsegmentator
from .vindr_cxr import vindr_cxr

LAYOUTS: dict[str, Callable[..., dict]] = {
    "msd": msd,
    "btcv": btcv,
    "amos": amos,
    "abdomenatlas": abdomenatlas,
    "totalsegmentator": totalsegmentator,
    "flare22": flare22,
    "chexpert": chexpert,
    "chestxray14": chestxray14,
    "vindr_cxr": vindr_cxr,
    "mimic_cxr": mimic_cxr,
}


def make_datalist(
    name: str, root: str | os.PathLike, out: str | os.PathLike | None = None, **options
) -> dict:
    """The datalist of the ``name`` layout found in ``root``; written to ``out`` when given."""
    if name not in LAYOUTS:
        raise KeyError(f"unknown dataset layout {name!r}; known: {sorted(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root is not a folder: {root}")
    data = LAYOUTS[name](root, **options)
    if out is not None:
        write_json(data, Path(out))
    return data


__all__ = ["LAYOUTS", "make_datalist", "merge_masks"]
