"""Atomic file writes: a reader, or a process started after a crash, sees the old file or the new one,
never a half-written one.

Every writer of the collection that produces a file another step reads (checkpoints, encoder files,
datalists, prepared NIfTI volumes, embeddings) goes through :func:`atomic_path`: the content is written to a
temporary file in the target's own folder (so the final ``os.replace`` is a rename within one file system,
which POSIX makes atomic), flushed to disk, and renamed over the target only once the writer returned. If the
writer raises (or the process is interrupted by an exception such as ``KeyboardInterrupt``) the temporary
file is removed and the previous target is left byte for byte as it was.

A process killed outright (``SIGKILL``, power loss) cannot clean up: the previous target is still intact,
but the hidden temporary file (``.tmp-<random>-<name>``) stays beside it and may be deleted.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a normal exit it replaces ``path``.

    The temporary name ends with the target's own name, so writers that choose the format from the
    extension (``.nii.gz``, ``.npy``, ``.png``) write the right one; it starts with ``.tmp-`` and a random
    token, so concurrent writers of the same target never share a temporary file. The parent folder is
    created. The file is ``fsync``-ed before the rename, so the rename never exposes an empty file after a
    power loss either. On any exception inside the block the temporary file is deleted and the exception
    propagates; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_path`; returns ``path``. torch writes into an open
    file (its archive folder is then named ``archive``, not after the temporary file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)
    return Path(path)
