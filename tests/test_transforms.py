"""Channel adaptation and the dimension-agnostic pipelines on 3D and 2D images."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.transforms import AdaptChannelsd, adapt_channels, segmentation_transforms


def test_adapt_channels_cases():
    gray = torch.arange(6.0).reshape(1, 2, 3)
    assert adapt_channels(gray, 3).shape == (3, 2, 3)
    rgb = torch.stack([gray[0], gray[0] * 2, gray[0] * 3])
    np.testing.assert_allclose(adapt_channels(rgb, 1)[0], gray[0] * 2)
    np.testing.assert_allclose(adapt_channels(gray, 1, invert=True)[0], 5.0 - gray[0])
    with pytest.raises(ValueError, match="2 channels to 3"):
        adapt_channels(torch.zeros(2, 4, 4), 3)


def test_monochrome1_is_inverted_from_meta():
    image = MetaTensor(torch.tensor([[[0.0, 10.0]]]), meta={"0028|0004": "MONOCHROME1"})
    out = AdaptChannelsd("image", out_channels=3)({"image": image})["image"]
    assert out.shape == (3, 1, 2) and isinstance(out, MetaTensor)
    np.testing.assert_allclose(out[0, 0], [10.0, 0.0])


def _save(array, affine, path):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_3d_pipeline_crops_and_normalises(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 300, size=(40, 36, 20)).astype(np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[10:20, 10:20, 5:10] = 2
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    item = {
        "image": _save(image, affine, tmp_path / "i.nii.gz"),
        "label": _save(label, affine, tmp_path / "l.nii.gz"),
    }
    train = segmentation_transforms("train", pixdim=3.0, roi_size=32, num_samples=2)
    samples = train(item)
    assert len(samples) == 2
    assert samples[0]["image"].shape == (1, 32, 32, 32) and samples[0]["label"].shape == (1, 32, 32, 32)
    # HU window to [0, 1], then intensity jitter of at most 10 % scale and 0.1 shift
    assert -0.21 <= float(samples[0]["image"].min()) and float(samples[0]["image"].max()) <= 1.21
    val = segmentation_transforms("val", pixdim=3.0)(item)
    assert set(np.unique(val["label"].numpy())) == {0, 2}
    infer = segmentation_transforms("infer", pixdim=[6.0, 6.0, 6.0])({"image": item["image"]})
    assert infer["image"].shape == (1, 20, 18, 10)


def test_2d_rgb_image_goes_through_the_same_builder(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    label = np.zeros((48, 40), dtype=np.uint8)
    label[10:30, 10:30] = 1
    Image.fromarray(label).save(tmp_path / "mask.png")
    item = {"image": str(tmp_path / "photo.png"), "label": str(tmp_path / "mask.png")}
    pipeline = segmentation_transforms(
        "train", spatial_dims=2, in_channels=1, intensity="minmax", roi_size=32
    )
    sample = pipeline(item)[0]
    assert sample["image"].shape == (1, 32, 32) and sample["label"].shape == (1, 32, 32)
    three = segmentation_transforms("val", spatial_dims=2, in_channels=3, intensity="minmax")(item)
    assert three["image"].shape[0] == 3
