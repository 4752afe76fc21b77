"""Channel adaptation and the dimension-agnostic pipelines on 3D and 2D images."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from common.data.fetch import fetch
from common.data.sources import SOURCES
from common.transforms import AdaptChannelsd, adapt_channels, segmentation_transforms


def test_adapt_channels_cases():
    gray = torch.arange(6.0).reshape(1, 2, 3)
    assert adapt_channels(gray, 3).shape == (3, 2, 3)
    rgb = torch.stack([gray[0], gray[0] * 2, gray[0] * 3])
    np.testing.assert_allclose(adapt_channels(rgb, 1)[0], gray[0] * 2)
    np.testing.assert_allclose(adapt_channels(gray, 1, invert=True)[0], 5.0 - gray[0])
    with pytest.raises(ValueError, match="2 channels to 3"):
        adapt_channels(torch.zeros(2, 4, 4), 3)


@pytest.mark.parametrize(
    "meta, inverted",
    [
        ({"0028|0004": "MONOCHROME1 "}, False),  # ITK: pixels already inverted, tag kept
        ({"00280004": {"vr": "CS", "Value": ["MONOCHROME1"]}}, True),  # pydicom: pixels as stored
        ({"PhotometricInterpretation": "MONOCHROME1"}, True),
        ({"00280004": {"vr": "CS", "Value": ["MONOCHROME2"]}}, False),
        ({}, False),
    ],
)
def test_monochrome1_is_inverted_once_by_reader(meta, inverted):
    image = MetaTensor(torch.tensor([[[0.0, 10.0]]]), meta=meta)
    out = AdaptChannelsd("image", out_channels=3)({"image": image})["image"]
    assert out.shape == (3, 1, 2) and isinstance(out, MetaTensor)
    np.testing.assert_allclose(out[0, 0], [10.0, 0.0] if inverted else [0.0, 10.0])


@pytest.mark.parametrize("reader, kwargs", [("ITKReader", {}), ("PydicomReader", {}),
                                            ("PydicomReader", {"prune_metadata": False})])  # fmt: skip
def test_real_monochrome1_radiograph_reads_the_same_through_every_reader(reader, kwargs, prepared_data):
    """pydicom-data's tibia radiograph is MONOCHROME1 (bright air as stored): whichever reader MONAI uses,
    the adapted image is the stored pixels inverted exactly once (bone bright, MONOCHROME2)."""
    pydicom = pytest.importorskip("pydicom")
    dcm = fetch(SOURCES["pydicom_data"]) / "data_store" / "data" / "RG3_UNCR.dcm"
    stored = pydicom.dcmread(dcm).pixel_array.astype(np.float32)
    assert pydicom.dcmread(dcm).PhotometricInterpretation == "MONOCHROME1"
    image = LoadImaged("image", reader=reader, image_only=True, ensure_channel_first=True, **kwargs)(
        {"image": str(dcm)}
    )["image"]
    out = AdaptChannelsd("image", out_channels=1)({"image": image})["image"]
    pixels = np.asarray(out).reshape(out.shape[1], out.shape[2]).T  # both readers give (columns, rows)
    np.testing.assert_array_equal(pixels, stored.max() + stored.min() - stored)


def test_unadaptable_image_names_its_file_and_key():
    image = MetaTensor(torch.zeros(2, 4, 4), meta={"filename_or_obj": "/data/two_channel.nii.gz"})
    with pytest.raises(ValueError, match=r"/data/two_channel\.nii\.gz \(key 'image'\): .*2 channels to 3"):
        AdaptChannelsd("image", out_channels=3)({"image": image})


def _subject_a(prepared_data):
    return {
        "image": str(prepared_data / "ct_multiorgan" / "totalseg_A_ct.nii.gz"),
        "label": str(prepared_data / "ct_multiorgan" / "totalseg_A_label.nii.gz"),
    }


def test_3d_pipeline_on_real_ct(prepared_data):
    item = _subject_a(prepared_data)  # 122 x 101 x 30 voxels of 3 mm
    samples = segmentation_transforms("train", pixdim=3.0, roi_size=64, num_samples=2)(item)
    assert len(samples) == 2
    assert samples[0]["image"].shape == (1, 64, 64, 64) and samples[0]["label"].shape == (1, 64, 64, 64)
    # HU window to [0, 1], then intensity jitter of at most 10 % scale and 0.1 shift
    assert -0.21 <= float(samples[0]["image"].min()) and float(samples[0]["image"].max()) <= 1.21
    val = segmentation_transforms("val", pixdim=3.0)(item)
    assert {1, 2} <= set(np.unique(val["label"].numpy()).tolist())
    assert all(n <= m for n, m in zip(val["image"].shape[1:], (122, 101, 30), strict=True))  # body crop
    infer = segmentation_transforms("infer", pixdim=[6.0, 6.0, 6.0])({"image": item["image"]})
    assert infer["image"].shape == (1, 62, 51, 15)  # 122 x 101 x 30 voxels of 3 mm at 6 mm


def test_2d_rgb_image_goes_through_the_same_builder(prepared_data, tmp_path):
    from PIL import Image

    ct = nib.load(_subject_a(prepared_data)["image"]).get_fdata()[:, :, 15]
    label = np.asanyarray(nib.load(_subject_a(prepared_data)["label"]).dataobj)[:, :, 15]
    gray = np.clip((ct + 175) / 425 * 255, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "slice_rgb.png")
    Image.fromarray(label.astype(np.uint8)).save(tmp_path / "slice_label.png")
    item = {"image": str(tmp_path / "slice_rgb.png"), "label": str(tmp_path / "slice_label.png")}
    pipeline = segmentation_transforms(
        "train", spatial_dims=2, in_channels=1, intensity="minmax", roi_size=32
    )
    sample = pipeline(item)[0]
    assert sample["image"].shape == (1, 32, 32) and sample["label"].shape == (1, 32, 32)
    three = segmentation_transforms("val", spatial_dims=2, in_channels=3, intensity="minmax")(item)
    assert three["image"].shape[0] == 3
    np.testing.assert_allclose(three["image"][0], three["image"][2])


def test_class_balanced_crops_reach_the_small_structures(prepared_data):
    item = _subject_a(prepared_data)
    balanced = segmentation_transforms("train", pixdim=3.0, roi_size=16, num_samples=81, num_classes=27)
    balanced.set_random_state(seed=0)
    centres = [int(s["label"][0, 8, 8, 8]) for s in balanced(item)]
    # 27 classes drawn equally often: nearly every structure is the centre of some crop, and the liver
    # (a fifth of the labelled voxels) of only a few, unlike foreground crops.
    assert len(set(centres)) >= 15  # foreground/background crops reach 10 here, 27 of them on the liver
    assert centres.count(1) <= 12
    sample = balanced(item)[0]
    assert sample["label"].shape == (1, 16, 16, 16)
    assert "label_cls_indices" not in sample  # the cached class indices do not reach the batch
