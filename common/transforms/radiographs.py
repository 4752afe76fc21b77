"""Pipelines for 2D radiographs (real or simulated), built from the same dimension-agnostic pieces as the 3D
ones (:func:`~common.transforms.builders.load_transforms` with ``spatial_dims=2``, ``minmax`` intensity,
:class:`~common.transforms.ssl.MultiCropd`).

- :func:`coda_transforms`: Coda's views (papers/000, Sec. 2): two augmented copies of the image for the
  inter-organ branch (``global_0`` for the student, ``global_1`` for the teacher), the augmented full image
  (``full``, :class:`FullViewd`: the teacher's view of the intra-organ branch) and ``num_local``
  multi-scale crops (``local_i``; paper: 12 of 96 px, scale 0.4-0.7) for the student; every view rotated
  at random (the paper's augmentations T: colour jitter, Gaussian blur, rotation, random cropping).
- :class:`BoxPatchd` and :func:`leader_transforms`: LeADER's (image, patch) pairs (papers/001, Algorithm 1
  lines 2-6): a patch from a disease box where the image has one, a random patch of a healthy image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from .builders import _as_tuple, load_transforms
from .ssl import MultiCropd


class FullViewd(MultiCropd):
    """Adds ``full_key``: the whole image of ``key`` (kept for the crops that follow), its longer side
    resized to ``size`` (the aspect ratio kept) and zero-padded to ``size``, augmented as
    :class:`~common.transforms.ssl.MultiCropd` augments its views (Coda, Eq. 2: the teacher sees the augmented
    input sample ``x_i``, not a crop of it)."""

    def __init__(
        self,
        key: str = "image",
        size: int | Sequence[int] = 224,
        full_key: str = "full",
        spatial_dims: int = 2,
        flip: bool = False,
    ) -> None:
        super().__init__(key, num_global=0, num_local=0, spatial_dims=spatial_dims, flip=flip)
        self.full_key, size = full_key, _as_tuple(size, spatial_dims)
        self.resize = mt.Compose(
            [mt.Resize(max(size), size_mode="longest", mode="bilinear"), mt.ResizeWithPadOrCrop(size)]
        )

    def __call__(self, data):
        d = dict(data)
        image = convert_to_tensor(d[self.key], dtype=torch.float32, track_meta=False)
        full = convert_to_tensor(self.resize(image), dtype=torch.float32, track_meta=False)
        d[self.full_key] = self._augment(full)
        return d


def coda_transforms(
    global_size: int | Sequence[int] = 224,
    global_scale: Sequence[float] = (0.5, 1.0),
    num_local: int = 12,
    local_size: int | Sequence[int] = 96,
    local_scale: Sequence[float] = (0.4, 0.7),
    in_channels: int = 1,
    rotation_degrees: float = 10.0,
    rotation_prob: float = 0.5,
) -> mt.Compose:
    """Load, adapt channels, rescale to [0, 1], then the full view (``full``, ``global_size``), two global
    views and ``num_local`` crops, each with intensity jitter, noise and Gaussian blur (no flips: left and
    right differ in anatomy), and each rotated, with probability ``rotation_prob``, by an angle drawn
    uniformly in +-``rotation_degrees`` (zero padding; the paper gives no range)."""
    full = FullViewd("image", global_size)
    views = MultiCropd(
        "image", 2, global_size, global_scale, num_local, local_size, local_scale, spatial_dims=2, flip=False
    )
    keys = ["full", "global_0", "global_1", *(f"local_{i}" for i in range(num_local))]
    angle = float(np.deg2rad(rotation_degrees))
    rotations = [
        mt.RandRotated(key, range_x=angle, prob=rotation_prob, keep_size=True, padding_mode="zeros")
        for key in keys
    ]
    load = load_transforms(["image"], spatial_dims=2, in_channels=in_channels, intensity="minmax")
    return mt.Compose(
        [
            *load,
            mt.EnsureTyped("image", track_meta=False),
            full,
            views,
            *rotations,
            mt.EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
    )


class BoxPatchd(Randomizable, MapTransform):
    """Adds ``patch_key``: a crop of ``image_key`` resized to ``patch_size``.

    The item's ``boxes_key`` lists ``{"name": str, "box": [r0, c0, r1, c1]}`` (pixels, half-open, in the
    loaded image's grid). Boxes whose name is in ``disease_names`` are disease boxes: one is drawn and
    enlarged by ``margin`` (a fraction of its size on each side). An image without one is healthy: the
    patch is a random square covering ``random_scale`` of the shorter side. ``boxes_key`` is removed (its
    items vary in length and would not collate).
    """

    def __init__(
        self,
        image_key: str = "image",
        boxes_key: str = "boxes",
        patch_key: str = "patch",
        disease_names: Sequence[str] = ("lung_tumor",),
        patch_size: int | Sequence[int] = 96,
        random_scale: Sequence[float] = (0.25, 0.5),
        margin: float = 0.25,
    ) -> None:
        MapTransform.__init__(self, image_key)
        self.image_key, self.boxes_key, self.patch_key = image_key, boxes_key, patch_key
        self.disease_names, self.patch_size = set(disease_names), _as_tuple(patch_size, 2)
        self.random_scale, self.margin = random_scale, margin

    def randomize(self, data=None) -> None:  # drawn inside __call__
        pass

    def region(self, shape: Sequence[int], boxes: Sequence[dict]) -> tuple[slice, slice]:
        """The patch's rows and columns in an image of ``shape`` (H, W)."""
        disease = [b["box"] for b in boxes if b["name"] in self.disease_names]
        if disease:
            r0, c0, r1, c1 = disease[self.R.randint(len(disease))]
            dr, dc = int(self.margin * (r1 - r0)), int(self.margin * (c1 - c0))
            r0, c0, r1, c1 = max(0, r0 - dr), max(0, c0 - dc), min(shape[0], r1 + dr), min(shape[1], c1 + dc)
            return slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1))
        side = max(1, int(self.R.uniform(*self.random_scale) * min(shape)))
        r0, c0 = self.R.randint(0, shape[0] - side + 1), self.R.randint(0, shape[1] - side + 1)
        return slice(r0, r0 + side), slice(c0, c0 + side)

    def __call__(self, data):
        d = dict(data)
        boxes = d.pop(self.boxes_key, [])
        image = torch.as_tensor(d[self.image_key])
        rows, cols = self.region(image.shape[1:], boxes)
        patch = image[:, rows, cols].float()[None]
        d[self.patch_key] = torch.nn.functional.interpolate(
            patch, size=self.patch_size, mode="bilinear", align_corners=False
        )[0]
        return d


def leader_transforms(
    image_size: int | Sequence[int] = 224,
    patch_size: int | Sequence[int] = 224,
    disease_names: Sequence[str] = ("lung_tumor",),
    in_channels: int = 1,
    augment: bool = True,
    with_patch: bool = True,
) -> mt.Compose:
    """Load, adapt channels, rescale to [0, 1], cut the patch (:class:`BoxPatchd`), resize the image, then
    LeADER's augmentations (Sec. 3: random affine, horizontal flip, intensity jitter) on image and patch
    independently. ``with_patch=False``: the image only (Algorithm 1's stage 1, image datasets without
    boxes)."""
    load = load_transforms(["image"], spatial_dims=2, in_channels=in_channels, intensity="minmax")
    keys = ["image", "patch"] if with_patch else ["image"]
    patch = [BoxPatchd(disease_names=disease_names, patch_size=patch_size)] if with_patch else []
    out = [
        *load,
        mt.EnsureTyped("image", track_meta=False),
        *patch,
        mt.Resized("image", spatial_size=_as_tuple(image_size, 2), mode="bilinear"),
    ]
    if augment:
        for key in keys:
            out += [
                mt.RandAffined(key, prob=0.5, rotate_range=np.pi / 18, scale_range=0.1, padding_mode="zeros"),
                mt.RandFlipd(key, prob=0.5, spatial_axis=1),
                mt.RandScaleIntensityd(key, factors=0.1, prob=0.5),
                mt.RandShiftIntensityd(key, offsets=0.1, prob=0.5),
            ]
    out.append(mt.EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return mt.Compose(out)
