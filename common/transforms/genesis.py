"""The image transformations of Models Genesis (Zhou et al. 2021, MedIA, Sec. 2.1-2.2, and the defaults of
the reference code, ``ModelsGenesis/pytorch/utils.py`` and ``config.py``), in 2D and 3D.

A view ``x`` in [0, 1] is corrupted, and the network learns to restore the original:

- local voxel shuffling (Sec. 2.1.2, probability ``local_rate`` 0.5): ``num_blocks`` (10000) small blocks,
  each side drawn in ``[1, size // 10]``, have their voxels permuted;
- non-linear intensity transformation (Sec. 2.1.1, probability ``nonlinear_rate`` 0.9): a monotonic
  cubic Bezier curve through ``(0, 0)`` and ``(1, 1)`` with two random inner control points, inverted with
  probability 0.5, maps every voxel value;
- then, with probability ``paint_rate`` 0.9, in-painting (Sec. 2.1.3, chosen with probability
  ``inpaint_rate`` 0.2): up to 5 boxes (each side in ``[size // 6, size // 3]``) are filled with uniform
  noise; or out-painting (Sec. 2.1.3, otherwise): the whole view becomes noise except up to 5 boxes (each
  side ``size`` minus ``[3 size // 7, 4 size // 7]``) that keep the original.

Shuffling is a permutation and the intensity curve acts voxel-wise, so their order does not matter (the
reference code shuffles first). Models Genesis also flips input and target together (up to 3 times, each
with ``flip_rate`` 0.4); :class:`ModelsGenesisd` does so too, so the views should be cut without
:class:`~common.transforms.ssl.MultiCropd`'s own augmentation (whose intensity changes would overlap the
curve's). Everything is drawn from one ``numpy.random.RandomState``.
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch
from monai import transforms as mt
from monai.transforms import MapTransform, Randomizable

from .ssl import ssl_transforms

CORRUPTED_KEY = "corrupted_0"
BEZIER_SAMPLES = 100_000  # nTimes of the reference code
CURVE_TABLE_SIZE = 4097
MAX_BOXES = 5  # per in- or out-painting
BOX_CONTINUE_RATE = 0.95  # the probability of drawing each box (the first out-painting box always comes)
PAINT_MARGIN = 3  # boxes start at least 3 voxels from the border


def bezier_curve(points: np.ndarray, samples: int = BEZIER_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` points of the Bezier curve of control ``points`` ``(K, 2)`` for ``t`` in [0, 1]:
    ``sum_i comb(K-1, i) t^i (1-t)^(K-1-i) P_i`` (it starts at ``P_0`` and ends at ``P_{K-1}``)."""
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, samples)
    bernstein = np.stack([comb(n, i) * t**i * (1 - t) ** (n - i) for i in range(n + 1)])
    curve = bernstein.T @ points
    return curve[:, 0], curve[:, 1]


def intensity_curve(rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """The random monotonic mapping ``(xp, fp)`` for ``np.interp``: the Bezier curve of ``(0, 0)``, two
    uniform control points and ``(1, 1)``, its samples sorted along both axes (making it monotonic, as the
    reference code does), and reversed with probability 0.5 (then it maps 0 to 1 and 1 to 0)."""
    points = np.array([[0.0, 0.0], rng.random_sample(2), rng.random_sample(2), [1.0, 1.0]])
    xs, ys = bezier_curve(points)
    xp, fp = np.sort(xs), np.sort(ys)
    if rng.random_sample() < 0.5:
        fp = fp[::-1]
    return xp, fp


def nonlinear_transform(x: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Every value of ``x`` (clipped to [0, 1]) mapped through :func:`intensity_curve` (Sec. 2.1.1).

    The curve is tabulated on ``CURVE_TABLE_SIZE`` evenly spaced inputs and interpolated linearly: within
    about 1e-5 of ``np.interp`` on the Bezier samples and ten times faster on a 96^3 view.
    """
    xp, fp = intensity_curve(rng)
    table = np.interp(np.linspace(0.0, 1.0, CURVE_TABLE_SIZE), xp, fp).astype(x.dtype)
    position = np.clip(x, 0.0, 1.0) * (CURVE_TABLE_SIZE - 1)
    low = np.minimum(np.floor(position), CURVE_TABLE_SIZE - 2)
    frac = position - low
    index = low.astype(np.intp)
    return table[index] * (1 - frac) + table[index + 1] * frac


def draw_shuffle_blocks(
    rng: np.random.RandomState, spatial: tuple[int, ...], num_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, sizes)``, each ``(num_blocks, D)``: block sides uniform in ``[1, max(1, size // 10)]``,
    positions uniform inside the view."""
    shape = np.array(spatial)
    sizes = np.stack([rng.randint(1, max(1, s // 10) + 1, num_blocks) for s in spatial], axis=1)
    starts = rng.randint(0, shape - sizes + 1)
    return starts, sizes


def shuffle_blocks(
    x: np.ndarray, starts: np.ndarray, sizes: np.ndarray, rng: np.random.RandomState
) -> np.ndarray:
    """Permute the voxels (all channels together) of each block of the original ``x`` ``(C, *spatial)``
    (Sec. 2.1.2). Blocks of one size are shuffled at once; where blocks overlap, a voxel takes its value
    from one of them, as in the reference loop where the last block drawn wins."""
    spatial = x.shape[1:]
    source = x.reshape(x.shape[0], -1)
    out = x.copy()
    target = out.reshape(x.shape[0], -1)
    size_keys = np.ravel_multi_index(tuple((sizes - 1).T), sizes.max(0))
    for key in np.unique(size_keys):
        members = np.flatnonzero(size_keys == key)
        size = sizes[members[0]]
        offsets = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(
            -1, len(size)
        )
        coords = starts[members][:, None, :] + offsets[None]
        flat = np.ravel_multi_index(tuple(np.moveaxis(coords, -1, 0)), spatial)
        order = np.argsort(rng.random_sample(flat.shape), axis=1)
        target[:, flat] = source[:, np.take_along_axis(flat, order, axis=1)]
    return out


def _place_box(rng: np.random.RandomState, spatial: tuple[int, ...], sides: list[int]) -> tuple[slice, ...]:
    starts = []
    for s, c in zip(spatial, sides, strict=True):
        margin = min(PAINT_MARGIN, (s - c) // 2)
        starts.append(rng.randint(margin, s - c - margin + 1))
    return tuple(slice(a, a + c) for a, c in zip(starts, sides, strict=True))


def draw_paint_boxes(
    rng: np.random.RandomState, spatial: tuple[int, ...], outpaint: bool
) -> list[tuple[slice, ...]]:
    """The boxes of in-painting (sides in ``[s // 6, s // 3]``; up to 5 boxes, each drawn with probability
    0.95) or out-painting (sides ``s`` minus ``[3 s // 7, 4 s // 7]``; one box, then up to 4 more, each
    with probability 0.95), as in the reference code."""
    boxes = []
    while len(boxes) < MAX_BOXES:
        first_outpaint_box = outpaint and not boxes
        if not first_outpaint_box and rng.random_sample() >= BOX_CONTINUE_RATE:
            break
        if outpaint:
            sides = [s - rng.randint(3 * s // 7, 4 * s // 7 + 1) for s in spatial]
        else:
            sides = [rng.randint(s // 6, s // 3 + 1) for s in spatial]
        boxes.append(_place_box(rng, spatial, sides))
    return boxes


def inpaint(x: np.ndarray, boxes: list[tuple[slice, ...]], rng: np.random.RandomState) -> np.ndarray:
    """``x`` with each box filled with uniform noise in [0, 1) (Sec. 2.1.3)."""
    out = x.copy()
    for box in boxes:
        region = out[(slice(None), *box)]
        region[...] = rng.random_sample(region.shape)
    return out


def outpaint(x: np.ndarray, boxes: list[tuple[slice, ...]], rng: np.random.RandomState) -> np.ndarray:
    """Uniform noise in [0, 1) everywhere except the boxes, which keep ``x`` (Sec. 2.1.3)."""
    out = rng.random_sample(x.shape).astype(x.dtype)
    for box in boxes:
        out[(slice(None), *box)] = x[(slice(None), *box)]
    return out


def models_genesis_corrupt(
    x: np.ndarray,
    rng: np.random.RandomState,
    local_rate: float = 0.5,
    nonlinear_rate: float = 0.9,
    paint_rate: float = 0.9,
    inpaint_rate: float = 0.2,
    num_blocks: int = 10000,
) -> np.ndarray:
    """The corrupted copy of ``x`` ``(C, *spatial)`` in [0, 1]: shuffling, intensity curve, then in- or
    out-painting, each with its probability (``generate_pair`` of the reference code, flips aside)."""
    spatial = x.shape[1:]
    if rng.random_sample() < local_rate:
        x = shuffle_blocks(x, *draw_shuffle_blocks(rng, spatial, num_blocks), rng)
    if rng.random_sample() < nonlinear_rate:
        x = nonlinear_transform(x, rng)
    if rng.random_sample() < paint_rate:
        if rng.random_sample() < inpaint_rate:
            x = inpaint(x, draw_paint_boxes(rng, spatial, outpaint=False), rng)
        else:
            x = outpaint(x, draw_paint_boxes(rng, spatial, outpaint=True), rng)
    return x


class ModelsGenesisd(Randomizable, MapTransform):
    """Flips ``key`` (the restoration target) with Models Genesis' flips and writes its corrupted copy
    (:func:`models_genesis_corrupt`) to ``output_key``; both float32 tensors ``(C, *spatial)``."""

    def __init__(
        self,
        key: str = "global_0",
        output_key: str = CORRUPTED_KEY,
        flip_rate: float = 0.4,
        local_rate: float = 0.5,
        nonlinear_rate: float = 0.9,
        paint_rate: float = 0.9,
        inpaint_rate: float = 0.2,
        num_blocks: int = 10000,
    ) -> None:
        MapTransform.__init__(self, key)
        self.key, self.output_key, self.flip_rate = key, output_key, flip_rate
        self.rates = dict(
            local_rate=local_rate,
            nonlinear_rate=nonlinear_rate,
            paint_rate=paint_rate,
            inpaint_rate=inpaint_rate,
            num_blocks=num_blocks,
        )

    def randomize(self, data=None) -> None:  # everything is drawn inside __call__
        pass

    def __call__(self, data):
        d = dict(data)
        image = torch.as_tensor(d[self.key], dtype=torch.float32).numpy(force=True)
        flips = 0
        while flips < 3 and self.R.random_sample() < self.flip_rate:
            image = np.flip(image, axis=1 + self.R.randint(image.ndim - 1))
            flips += 1
        image = np.ascontiguousarray(image)
        d[self.key] = torch.from_numpy(image)
        d[self.output_key] = torch.from_numpy(models_genesis_corrupt(image, self.R, **self.rates))
        return d


def genesis_transforms(
    flip_rate: float = 0.4,
    local_rate: float = 0.5,
    nonlinear_rate: float = 0.9,
    paint_rate: float = 0.9,
    inpaint_rate: float = 0.2,
    **view_kwargs,
) -> mt.Compose:
    """:func:`~common.transforms.ssl.ssl_transforms` (``view_kwargs``) followed by :class:`ModelsGenesisd`
    on ``global_0``, in one flat ``Compose`` so that ``CacheDataset`` caches the deterministic part."""
    views = ssl_transforms(**view_kwargs)
    genesis = ModelsGenesisd(
        "global_0", CORRUPTED_KEY, flip_rate, local_rate, nonlinear_rate, paint_rate, inpaint_rate
    )
    return mt.Compose([*views.transforms, genesis])
