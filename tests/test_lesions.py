"""Encoder features of the segmenters and the lesion-classification evaluation (SuPreM), on the real
lesion cases: patch sampling, leave-one-case-out AUC against a brute-force Mann-Whitney count, outputs."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR

from common.data import DATA_LISTS_DIR
from common.evaluation import lesion_classification, lesion_patches
from common.networks.features import encoder_features
from common.networks.segmenter import build_segmenter

LESIONS = DATA_LISTS_DIR / "lesions.json"


def _items():
    return {item["subject"]: item for item in json.loads(LESIONS.read_text())["training"]}


class _Captured(Exception):
    pass


def _hooked(net, module, x):
    """Pooled output of ``module`` (its last output if it returns a list) as ``net(x)`` computes it; the
    forward pass stops there (the decoder is not needed)."""
    seen = []

    def hook(_module, _inputs, out):
        seen.append(out[-1] if isinstance(out, list) else out)
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0].flatten(2).mean(2)


def _innermost(unet):
    block = unet.model
    while isinstance(block, torch.nn.Sequential) and len(block) == 3 and hasattr(block[1], "submodule"):
        block = block[1].submodule
    return block


@torch.no_grad()
def test_encoder_features_channels_and_values():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32, 32)

    swin = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    feats = encoder_features(swin, x)
    assert feats.shape == (2, 16 * 12)
    torch.testing.assert_close(feats, _hooked(swin, swin.swinViT, x))

    segresnet = build_segmenter("segresnet", feature_size=8).eval()
    feats = encoder_features(segresnet, x)
    assert feats.shape == (2, 8 * 8)
    torch.testing.assert_close(feats, segresnet.encode(x)[0].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(feats, _hooked(segresnet, segresnet.down_layers[-1], x))

    unet = build_segmenter("unet", feature_size=4).eval()
    feats = encoder_features(unet, x)
    assert feats.shape == (2, 16 * 4)
    # the bottleneck as the full forward pass (decoder included) computes it
    torch.testing.assert_close(feats, _hooked(unet, _innermost(unet), x))

    with pytest.raises(TypeError, match="Conv3d"):
        encoder_features(torch.nn.Conv3d(1, 2, 3), x)


def test_lesion_patches_centres_and_determinism(prepared_data):
    roi, half = (16, 16, 16), 8
    for subject in ("pyradiomics_brain2", "pyradiomics_lung1"):
        item = _items()[subject]
        patches, labels, masks = lesion_patches(
            item, prepared_data, roi_size=roi, patches_per_class=3, seed=1, return_masks=True
        )
        assert patches.shape == masks.shape == (6, 1, *roi) and patches.dtype == torch.float32
        assert labels.tolist() == [1, 1, 1, 0, 0, 0]
        assert (masks[labels == 1, 0, half, half, half] == 1).all(), subject  # lesion voxel at the centre
        assert masks[labels == 0].sum() == 0, subject  # no lesion voxel anywhere in a negative patch
        if item["modality"] == "MR":
            assert (patches[labels == 0, 0, half, half, half] != 0).all()  # centred on the body (non-zero)
        else:
            assert patches.min() >= 0 and patches.max() <= 1  # HU window to [0, 1]
        again = lesion_patches(item, prepared_data, roi_size=roi, patches_per_class=3, seed=1)
        assert torch.equal(again[0], patches) and torch.equal(again[1], labels)
        other = lesion_patches(item, prepared_data, roi_size=roi, patches_per_class=3, seed=2)
        assert not torch.equal(other[0], patches)


def test_lesion_patches_errors_name_the_file(prepared_data, tmp_path):
    item = dict(_items()["pyradiomics_breast1"])
    image = nib.load(prepared_data / item["image"])
    empty = tmp_path / "empty_lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, dtype=np.uint8), image.affine), empty)
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*no lesion voxel"):
        lesion_patches({**item, "label": str(empty)}, prepared_data, roi_size=(16, 16, 16))
    # the breast image (about 20 x 54 x 22 voxels at 1.5 x 1.5 x 2 mm) fits in one 128^3 patch with its lesion
    with pytest.raises(ValueError, match=re.escape(item["label"]) + ".*no negative position"):
        lesion_patches(item, prepared_data, roi_size=(128, 128, 128))


def _mann_whitney(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_lesion_classification_auc_and_outputs(prepared_data, tmp_path):
    torch.manual_seed(0)
    net = build_segmenter("segresnet", feature_size=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = lesion_classification(
        net, LESIONS, tmp_path / "out", dataset_dir=prepared_data, roi_size=(16, 16, 16), patches_per_class=3
    )
    assert net.training  # training mode restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # frozen

    subjects = list(_items())
    assert result["feature_dim"] == 64 and result["num_patches"] == 5 * 6
    assert [case["subject"] for case in result["cases"]] == subjects
    scores, labels = result["scores"], result["labels"]
    assert len(scores) == len(labels) == len(result["subjects"]) == 30 and sum(labels) == 15
    assert 0.0 <= min(scores) and max(scores) <= 1.0
    assert result["auc"] == pytest.approx(_mann_whitney(scores, labels), abs=1e-12)
    for case in result["cases"]:
        rows = zip(scores, labels, result["subjects"], strict=True)
        mine = [(s, y) for s, y, subject in rows if subject == case["subject"]]
        assert case["num_patches"] == len(mine) == 6
        assert case["auc"] == pytest.approx(_mann_whitney(*zip(*mine, strict=True)), abs=1e-12)

    written = json.loads((tmp_path / "out" / "lesion_classification.json").read_text())
    assert written["scores"] == scores and written["labels"] == labels and written["auc"] == result["auc"]
    assert (tmp_path / "out" / "lesion_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob("*.tmp*"))
