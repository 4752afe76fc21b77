"""Right-angle rotations of a batch, the pretext transform of rotation prediction (Gidaris, Singh and
Komodakis 2018, Sec. 3: the image rotated by 0, 90, 180 or 270 degrees, the network predicts which) and of
the SwinUNETR pre-training recipe (Tang et al. 2022, Sec. 3.2, Eq. 2).

Two rotation sets:

- ``"axial4"``: the four rotations by ``k * 90`` degrees in ``plane`` (two spatial axes, 0-based; default
  ``(0, 1)``, which for an RAS-oriented volume is the axial plane, a rotation about the superior-inferior
  axis). Works in 2D and 3D. Label ``k`` is ``torch.rot90(view, k, plane)``.
- ``"cube24"`` (3D only): the 24 rotations of the cube. Label ``4 * f + k`` first rotates by ``k`` quarter
  turns in ``plane``, then applies the ``f``-th of six "tips" that carry the third axis onto each of the six
  face directions (``f = 0`` is no tip, so labels 0-3 are the ``axial4`` rotations).

Views must have equal sides in ``plane`` (in ``cube24`` on every axis) so that shapes are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ROTATION_SETS = ("axial4", "cube24")


def num_rotations(rotations: str) -> int:
    """How many classes a rotation set has: 4 (``"axial4"``) or 24 (``"cube24"``)."""
    if rotations not in ROTATION_SETS:
        raise ValueError(f"rotations must be one of {ROTATION_SETS}, got {rotations!r}")
    return 4 if rotations == "axial4" else 24


def _tips(plane: Sequence[int]) -> list[tuple[int, tuple[int, int]]]:
    """Six rotations ``(k, plane)`` carrying the axis normal to ``plane`` onto the six face directions:
    none, 1, 2 or 3 quarter turns in the (first in-plane axis, normal) plane, 1 or 3 in the (second, normal)
    plane."""
    a, b = plane
    (normal,) = {0, 1, 2} - {a, b}
    return [
        (0, (a, b)),
        (1, (a, normal)),
        (2, (a, normal)),
        (3, (a, normal)),
        (1, (b, normal)),
        (3, (b, normal)),
    ]


def _rotate(
    t: torch.Tensor, label: int, plane: Sequence[int], rotations: str, first_spatial: int
) -> torch.Tensor:
    """``t`` (spatial axes from dim ``first_spatial`` on) rotated by rotation ``label`` of ``rotations``."""
    n = num_rotations(rotations)
    if not 0 <= label < n:
        raise ValueError(f"rotation label {label} outside [0, {n})")
    plane = tuple(int(p) for p in plane)
    dims = tuple(first_spatial + p for p in plane)
    if rotations == "axial4":
        return torch.rot90(t, label, dims)
    if t.ndim - first_spatial != 3:
        raise ValueError(f"cube24 rotations need 3 spatial dims, got shape {tuple(t.shape)}")
    tip_turns, tip_plane = _tips(plane)[label // 4]
    return torch.rot90(
        torch.rot90(t, label % 4, dims), tip_turns, tuple(first_spatial + p for p in tip_plane)
    )


def rotate_sample(
    view: torch.Tensor, label: int, plane: Sequence[int] = (0, 1), rotations: str = "axial4"
) -> torch.Tensor:
    """One ``(C, *spatial)`` view rotated by rotation ``label`` of the set ``rotations``."""
    return _rotate(view, label, plane, rotations, first_spatial=1)


def rotate_batch(
    x: torch.Tensor, labels: torch.Tensor, plane: Sequence[int] = (0, 1), rotations: str = "axial4"
) -> torch.Tensor:
    """Each sample ``x[i]`` of a ``(B, C, *spatial)`` batch rotated by rotation ``labels[i]`` (samples
    sharing a label are rotated together)."""
    if labels.shape != (x.shape[0],):
        raise ValueError(f"need one label per sample: x {tuple(x.shape)}, labels {tuple(labels.shape)}")
    out = torch.empty_like(x)
    for label in labels.unique().tolist():
        index = (labels == label).nonzero().flatten()
        out[index] = _rotate(x[index], label, plane, rotations, first_spatial=2)
    return out


def random_rotation_labels(
    batch_size: int,
    rotations: str = "axial4",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``batch_size`` labels drawn uniformly from the rotation set (Tang et al. 2022, Sec. 3.2)."""
    labels = torch.randint(num_rotations(rotations), (batch_size,), generator=generator)
    return labels.to(device) if device is not None else labels


def all_rotations(
    x: torch.Tensor, plane: Sequence[int] = (0, 1), rotations: str = "axial4"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rotation of every sample: ``(K * B, C, *spatial)`` views, rotation-major, and their labels
    (Gidaris et al. 2018, Sec. 3 / Sec. 4.1: all K rotated copies of an image in the same mini-batch)."""
    n = num_rotations(rotations)
    labels = torch.arange(n, device=x.device).repeat_interleave(x.shape[0])
    return rotate_batch(x.repeat(n, *([1] * (x.ndim - 1))), labels, plane, rotations), labels
