"""Dimension-agnostic transform pipelines shared by every bundle.

One builder serves 3D volumes (CT, MRI) and 2D images (radiographs): ``spatial_dims`` selects the
geometry, and :class:`~common.transforms.channels.AdaptChannelsd` maps grayscale, RGB or MONOCHROME1 inputs
to the network's input channels. Deterministic transforms come first, so a ``CacheDataset`` caches them and
re-runs only the random ones.

Training pipelines also read a preprocessed store (``data_source="store"``, :mod:`common.data.preprocess`):
the deterministic transforms were run once, before training, so the pipeline starts at its random part,
with crops read from the store (:class:`~common.data.patch_dataset.RandStorePatchd`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai import transforms as mt

from ..data.patch_dataset import RandStorePatchd
from .channels import AdaptChannelsd
from .dims import EnsureSpatialDimsd

INTENSITY_MODES = ("ct", "mr", "minmax")
STAGES = ("train", "val", "infer")
DATA_SOURCES = ("nifti", "store")
CT_WINDOW = (-175.0, 250.0)  # HU: the abdominal soft-tissue window


def _as_tuple(value, spatial_dims: int) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * spatial_dims
    if len(values) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} values, got {values}")
    return values


def intensity_transform(key: str, mode: str, ct_window: Sequence[float] = CT_WINDOW):
    """Intensity normalisation: ``ct`` clips a HU window to [0, 1], ``mr`` z-scores non-zero voxels,
    ``minmax`` rescales to [0, 1] (radiographs, photographs)."""
    if mode == "ct":
        return mt.ScaleIntensityRanged(
            key, a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True
        )
    if mode == "mr":
        return mt.NormalizeIntensityd(key, nonzero=True, channel_wise=True)
    if mode == "minmax":
        return mt.ScaleIntensityd(key, minv=0.0, maxv=1.0)
    raise ValueError(f"unknown intensity mode {mode!r}; choose one of {INTENSITY_MODES}")


def check_data_source(data_source: str, spatial_dims: int, in_channels: int) -> None:
    """A clear error for an unknown ``data_source``, or a store asked for what it does not hold (the store
    keeps 3D single-channel volumes)."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; choose one of {DATA_SOURCES}")
    if data_source == "store" and (spatial_dims, in_channels) != (3, 1):
        raise ValueError(
            f"data_source 'store' holds 3D single-channel volumes; got spatial_dims={spatial_dims}, "
            f"in_channels={in_channels}"
        )


class Spacingd(mt.Spacingd):
    """``monai.transforms.Spacingd`` that tolerates non-dict ``<key>_*`` entries.

    MONAI 1.6 updates every ``<key>_*`` entry of the data as a metadata dict after resampling a NIfTI
    image; MONAI Label puts the input path, a string, in ``image_path``, which then fails with
    "'str' object has no attribute 'update'". Such entries are set aside during the call.
    """

    def __call__(self, data, lazy=None):
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if str(k).startswith(prefixes) and not isinstance(d[k], dict)}
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d


def load_transforms(
    keys: Sequence[str],
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = None,
    intensity: str = "ct",
    ct_window: Sequence[float] = CT_WINDOW,
    image_key: str = "image",
) -> list:
    """Load channel-first, adapt channels, orient (RAS, 3D only), resample to ``pixdim``, normalise."""
    keys = list(keys)
    out = [
        mt.LoadImaged(keys, image_only=True, ensure_channel_first=True),
        AdaptChannelsd(image_key, out_channels=in_channels),
    ]
    if spatial_dims == 3:
        out.append(mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if pixdim is not None:
        modes = ["bilinear" if k == image_key else "nearest" for k in keys]
        out.append(Spacingd(keys, pixdim=_as_tuple(pixdim, spatial_dims), mode=modes))
    out.append(intensity_transform(image_key, intensity, ct_window))
    return out


def segmentation_random_transforms(image_key: str = "image") -> list:
    """The intensity jitter after the training crops (scale and shift by up to 10 %, each half the time)."""
    return [
        mt.RandScaleIntensityd(image_key, factors=0.1, prob=0.5),
        mt.RandShiftIntensityd(image_key, offsets=0.1, prob=0.5),
    ]


def segmentation_transforms(
    stage: str,
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = None,
    intensity: str = "ct",
    ct_window: Sequence[float] = CT_WINDOW,
    roi_size: int | Sequence[int] = 64,
    num_samples: int = 2,
    pos_neg: Sequence[float] = (2.0, 1.0),
    num_classes: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    data_source: str = "nifti",
) -> mt.Compose:
    """The segmentation pipeline of one ``stage``: ``train`` (random crops of ``roi_size`` and intensity
    jitter; with ``num_classes`` the crops are centred on each class equally often, which keeps small
    organs in view, otherwise on foreground versus background at ``pos_neg``), ``val`` (whole volume
    cropped to the body), or ``infer`` (image only, invertible so predictions go back to the input's
    space). No flips or 90-degree rotations: the class lists name left and right structures (ribs,
    muscles) and tell liver from spleen partly by side, which a mirrored crop would contradict.

    ``data_source="store"`` (``train`` only): the items are store records (:mod:`common.data.preprocess`
    with ``--intensity`` and ``--ct_window`` as here, ``--num_classes``), cropped by
    :class:`~common.data.patch_dataset.RandStorePatchd` in the same crop mode, then the same random tail."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    check_data_source(data_source, spatial_dims, in_channels)
    keys = [image_key] if stage == "infer" else [image_key, label_key]
    if data_source == "store":
        if stage != "train":
            raise ValueError(f"data_source 'store' serves training crops only, not stage {stage!r}")
        expect = {"pixdim": pixdim, "intensity": intensity, "num_classes": num_classes}
        expect.update(crop_foreground=True, **({"ct_window": ct_window} if intensity == "ct" else {}))
        crop = RandStorePatchd(
            roi_size,
            mode="classes" if num_classes else "pos_neg",
            num_samples=num_samples,
            pos=pos_neg[0],
            neg=pos_neg[1],
            image_key=image_key,
            label_key=label_key,
            expect=expect,
        )
        random_tail = segmentation_random_transforms(image_key)
        return mt.Compose([crop, mt.EnsureTyped(keys, track_meta=False), *random_tail])
    out = load_transforms(keys, spatial_dims, in_channels, pixdim, intensity, ct_window, image_key)
    if stage == "infer":  # a served bundle gets any image: name a wrong dimensionality before it fails
        return mt.Compose([out[0], EnsureSpatialDimsd(image_key, spatial_dims), *out[1:]])
    roi = _as_tuple(roi_size, spatial_dims)
    out += [
        mt.CropForegroundd(keys, source_key=image_key, allow_smaller=True),
        mt.EnsureTyped(keys, track_meta=stage == "val"),
    ]
    if stage == "val":
        return mt.Compose(out)
    out.append(mt.SpatialPadd(keys, spatial_size=roi))
    if num_classes:
        # Each class's voxel indices are computed once here (the dataset cache keeps them), not per crop.
        indices = f"{label_key}_cls_indices"
        out += [
            mt.ClassesToIndicesd(label_key, num_classes=num_classes, indices_postfix="_cls_indices"),
            mt.RandCropByLabelClassesd(
                keys,
                label_key=label_key,
                spatial_size=roi,
                num_classes=num_classes,
                num_samples=num_samples,
                indices_key=indices,
                warn=False,  # classes absent from a volume (few-shot, partial labels) get ratio 0
            ),
            mt.DeleteItemsd(indices),
        ]
    else:
        out.append(
            mt.RandCropByPosNegLabeld(
                keys,
                label_key=label_key,
                spatial_size=roi,
                pos=pos_neg[0],
                neg=pos_neg[1],
                num_samples=num_samples,
            )
        )
    return mt.Compose([*out, *segmentation_random_transforms(image_key)])


def classification_transforms(
    stage: str,
    spatial_dims: int = 3,
    in_channels: int = 1,
    pixdim: float | Sequence[float] | None = None,
    intensity: str = "ct",
    ct_window: Sequence[float] = CT_WINDOW,
    spatial_size: int | Sequence[int] = 96,
    label_key: str | None = "label",
    multilabel: bool = False,
    image_key: str = "image",
) -> mt.Compose:
    """The classification pipeline of one ``stage`` for 2D images or 3D volumes: load and normalise
    (:func:`load_transforms`), resize the whole image to ``spatial_size``; ``train`` adds a small random
    affine (rotation up to 10 degrees, scale 10 %) and intensity jitter. The label (the item's ``label_key``,
    e.g. a multi-label ``findings`` list) becomes ``label``: a long class index, or with ``multilabel`` a
    float vector of 0/1 per class."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    out = load_transforms([image_key], spatial_dims, in_channels, pixdim, intensity, ct_window, image_key)
    out.append(mt.Resized(image_key, spatial_size=_as_tuple(spatial_size, spatial_dims), mode="area"))
    if stage == "train":
        out += [
            mt.RandAffined(image_key, prob=0.5, rotate_range=0.17, scale_range=0.1, padding_mode="zeros"),
            mt.RandScaleIntensityd(image_key, factors=0.1, prob=0.5),
            mt.RandShiftIntensityd(image_key, offsets=0.1, prob=0.5),
        ]
    out.append(mt.EnsureTyped(image_key, track_meta=stage == "infer"))
    if label_key and stage != "infer":
        if label_key != "label":
            out += [mt.DeleteItemsd("label"), mt.CopyItemsd(label_key, names="label")]
        dtype = torch.float32 if multilabel else torch.long
        out.append(mt.EnsureTyped("label", dtype=dtype, track_meta=False))
    return mt.Compose(out)
