"""Figures without pyplot's global state, written atomically.

Every analysis draws on :func:`new_figure` (a ``matplotlib.figure.Figure`` with an Agg canvas: safe in
threads and headless runs) and writes with :func:`save_figure` (temporary file in the target folder, then
``os.replace``), so a stopped run never leaves a half-written PNG.
"""

from __future__ import annotations

import os
from pathlib import Path


def new_figure(figsize: tuple[float, float]):
    """A ``Figure`` of ``figsize`` inches attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
