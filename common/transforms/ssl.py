"""Views for self-supervised pre-training on unlabelled 3D (or 2D) volumes.

:func:`pool_transforms` is the deterministic part (cached once per volume): load, orient, resample,
normalise by modality to [0, 1], crop to the body. :class:`MultiCropd` then cuts the random views every
method takes from a batch: ``global_0 .. global_{G-1}`` and ``local_0 .. local_{L-1}``, each a random
sub-volume covering a fraction of the volume drawn from a scale range, resized to a fixed size and
augmented. This is DINO's multi-crop (Caron et al. 2021, Sec. 3.1: two global views, several small local
ones) in 3D; one global view serves the masked and restorative methods, two the contrastive ones.

From a preprocessed store (``data_source="store"``, :mod:`common.data.patch_dataset`) the deterministic part
was done once, before training: :class:`~common.data.patch_dataset.StoreVolumed` hands the stored volume on
unread and :class:`MultiCropd` reads only its views' regions, so the views equal those of the NIfTI
pipeline for the same random draws (to the store's precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from ..data.patch_dataset import StoreVolumed
from .builders import Spacingd, _as_tuple, check_data_source
from .channels import AdaptChannelsd

MODALITIES = ("CT", "MR")
POOL_CT_WINDOW = (-1000.0, 1000.0)  # HU: air to dense bone, the whole body's range for a mixed pool


class NormalizeByModalityd(MapTransform):
    """Scale intensities to [0, 1] by each sample's ``modality`` entry: CT clips the HU window
    ``ct_window``; MR (and anything else) clips the ``percentiles`` of its non-zero voxels."""

    def __init__(
        self,
        keys: KeysCollection,
        modality_key: str = "modality",
        ct_window: Sequence[float] = POOL_CT_WINDOW,
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        super().__init__(keys)
        self.modality_key = modality_key
        self.ct = mt.ScaleIntensityRange(ct_window[0], ct_window[1], 0.0, 1.0, clip=True)
        self.mr = mt.ScaleIntensityRangePercentiles(*percentiles, 0.0, 1.0, clip=True, channel_wise=True)

    def __call__(self, data):
        d = dict(data)
        modality = str(d.get(self.modality_key, "CT")).upper()
        for key in self.key_iterator(d):
            d[key] = self.ct(d[key]) if modality == "CT" else self.mr(d[key])
        return d


def pool_transforms(
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = 2.0,
    ct_window: Sequence[float] = POOL_CT_WINDOW,
    image_key: str = "image",
    track_meta: bool = False,
) -> list:
    """Deterministic preprocessing of an unlabelled pool entry ``{"image": path, "modality": "CT"|"MR"}``
    (``track_meta`` keeps the image metadata, which inference needs to name its outputs)."""
    out = [
        mt.LoadImaged(image_key, image_only=True, ensure_channel_first=True),
        AdaptChannelsd(image_key, out_channels=in_channels),
    ]
    if spatial_dims == 3:
        out.append(mt.Orientationd(image_key, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if pixdim is not None:
        out.append(Spacingd(image_key, pixdim=_as_tuple(pixdim, spatial_dims), mode="bilinear"))
    out += [
        NormalizeByModalityd(image_key, ct_window=ct_window),
        mt.CropForegroundd(image_key, source_key=image_key, allow_smaller=True),
        mt.EnsureTyped(image_key, track_meta=track_meta),
    ]
    return out


class MultiCropd(Randomizable, MapTransform):
    """Random views of ``key`` as new keys ``global_i`` and ``local_i`` (the source key is dropped).

    ``key`` holds a channel-first tensor, or a lazily sliced array (a store's blosc2 array from
    :class:`~common.data.patch_dataset.StoreVolumed`), of which only the views' regions are read.
    A view covers a random fraction ``s`` of the volume's voxels, ``s ~ U(scale)``: a cube-shaped region of
    side ``s ** (1/D)`` times the volume's geometric-mean side (capped by each axis), resized to
    ``global_size`` / ``local_size``. With ``augment``, each view independently gets intensity scaling and
    shift, Gaussian noise and Gaussian smoothing (SimCLR's colour and blur augmentations, Chen et al. 2020,
    App. A, in their grey-level 3D form), and with ``flip`` random flips along every axis. Rotation
    prediction turns ``flip`` off: flipping both axes of a plane is a 180-degree rotation of it.
    """

    def __init__(
        self,
        key: str = "image",
        num_global: int = 2,
        global_size: int | Sequence[int] = 96,
        global_scale: Sequence[float] = (0.3, 1.0),
        num_local: int = 0,
        local_size: int | Sequence[int] = 48,
        local_scale: Sequence[float] = (0.05, 0.3),
        augment: bool = True,
        spatial_dims: int = 3,
        flip: bool = True,
    ) -> None:
        MapTransform.__init__(self, key)
        self.key = key
        self.spatial_dims = spatial_dims
        self.specs = [
            ("global", i, _as_tuple(global_size, spatial_dims), global_scale) for i in range(num_global)
        ]
        self.specs += [
            ("local", i, _as_tuple(local_size, spatial_dims), local_scale) for i in range(num_local)
        ]
        self.augment, self.flip = augment, flip

    def _region(self, shape: Sequence[int], scale: Sequence[float]) -> tuple[slice, ...]:
        fraction = self.R.uniform(*scale)
        side = float(np.prod(shape)) ** (1.0 / len(shape)) * fraction ** (1.0 / len(shape))
        sizes = [max(1, min(int(round(side)), s)) for s in shape]
        starts = [int(self.R.randint(0, s - c + 1)) for s, c in zip(shape, sizes, strict=True)]
        return tuple(slice(a, a + c) for a, c in zip(starts, sizes, strict=True))

    def _augment(self, view: torch.Tensor) -> torch.Tensor:
        for axis in range(1, view.ndim):
            if self.flip and self.R.rand() < 0.5:
                view = view.flip(axis)
        if self.R.rand() < 0.8:
            view = view * self.R.uniform(0.9, 1.1) + self.R.uniform(-0.1, 0.1)
        if self.R.rand() < 0.2:
            view = view + torch.from_numpy(self.R.normal(0.0, 0.02, view.shape).astype(np.float32))
        if self.R.rand() < 0.2:
            view = mt.GaussianSmooth(sigma=self.R.uniform(0.5, 1.0))(view)
        return convert_to_tensor(view, dtype=torch.float32, track_meta=False).contiguous()

    def randomize(self, data=None) -> None:  # views are drawn inside __call__, one region each
        pass

    def __call__(self, data):
        d = dict(data)
        image = d.pop(self.key)
        if isinstance(image, (torch.Tensor, np.ndarray)):
            image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        spatial = image.shape[1:]
        if len(spatial) != self.spatial_dims:
            raise ValueError(
                f"{self.key}: expected {self.spatial_dims} spatial dims, got shape {tuple(image.shape)}"
            )
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        for kind, i, size, scale in self.specs:
            region = image[(slice(None), *self._region(spatial, scale))]
            region = convert_to_tensor(region, dtype=torch.float32, track_meta=False)  # read if lazy
            view = F.interpolate(region[None], size=size, mode=mode, align_corners=False)[0]
            d[f"{kind}_{i}"] = self._augment(view) if self.augment else view.contiguous()
        return d


def ssl_transforms(
    num_global: int = 1,
    global_size: int | Sequence[int] = 96,
    global_scale: Sequence[float] = (0.3, 1.0),
    num_local: int = 0,
    local_size: int | Sequence[int] = 48,
    local_scale: Sequence[float] = (0.05, 0.3),
    augment: bool = True,
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = 2.0,
    ct_window: Sequence[float] = POOL_CT_WINDOW,
    flip: bool = True,
    data_source: str = "nifti",
) -> mt.Compose:
    """:func:`pool_transforms` followed by :class:`MultiCropd`: the whole pre-training pipeline. With
    ``data_source="store"`` the items are store records (:mod:`common.data.preprocess` with
    ``--intensity modality``) and :func:`pool_transforms` is replaced by
    :class:`~common.data.patch_dataset.StoreVolumed`, which states the settings the store must have been
    preprocessed with (checked by :func:`common.data.train_data.train_dataset`)."""
    check_data_source(data_source, spatial_dims, in_channels)
    views = MultiCropd(
        "image",
        num_global,
        global_size,
        global_scale,
        num_local,
        local_size,
        local_scale,
        augment,
        spatial_dims,
        flip,
    )
    if data_source == "store":
        expect = {"pixdim": pixdim, "intensity": "modality", "ct_window": ct_window, "crop_foreground": True}
        return mt.Compose([StoreVolumed("image", expect), views])
    return mt.Compose([*pool_transforms(spatial_dims, in_channels, pixdim, ct_window), views])


def embedding_transforms(
    roi_size: int | Sequence[int] = 96,
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = 2.0,
    ct_window: Sequence[float] = POOL_CT_WINDOW,
) -> mt.Compose:
    """Inference input of a pre-training bundle: :func:`pool_transforms`, then the central ``roi_size``
    field of view (padded or cropped), the size the embedding network is traced at."""
    pre = pool_transforms(spatial_dims, in_channels, pixdim, ct_window, track_meta=True)
    return mt.Compose([*pre, mt.ResizeWithPadOrCropd("image", _as_tuple(roi_size, spatial_dims))])
