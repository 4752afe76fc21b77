"""Writing per-image embeddings (the inference output of the pre-training bundles)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..atomic import atomic_path


class SaveEmbeddingd(MapTransform):
    """Save each ``keys`` vector of a decollated item as ``<output_dir>/<image name>_<postfix>.npy``
    (atomically: :func:`common.atomic.atomic_path`). The image name comes from ``meta_key``'s
    ``filename_or_obj``."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        meta_key: str = "image",
        postfix: str = "embedding",
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.meta_key, self.postfix = Path(output_dir), meta_key, postfix

    def __call__(self, data):
        d = dict(data)
        source = getattr(d.get(self.meta_key), "meta", {}).get("filename_or_obj")
        if not source:
            raise KeyError(f"{self.meta_key}: no filename_or_obj in its metadata (keep track_meta on)")
        stem = Path(str(source)).name.split(".")[0]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key in self.key_iterator(d):
            vector = torch.as_tensor(d[key]).detach().cpu().float().numpy().reshape(-1)
            target = self.output_dir / f"{stem}_{self.postfix}.npy"
            with atomic_path(target) as tmp:
                np.save(tmp, vector)
        return d
