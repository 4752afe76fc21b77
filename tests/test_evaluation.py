"""Per-class Dice against MONAI's DiceMetric and hand-worked cases; the trivial baseline formula."""

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from common.evaluation import dice_per_class, format_dice_table, save_overlay, trivial_dice


def test_dice_hand_worked():
    label = np.array([[0, 1, 1, 2]])
    pred = np.array([[1, 1, 0, 2]])
    # class 1: |P∩L| = 1, |P| = 2, |L| = 2 -> 0.5; class 2: perfect; class 3: absent from both -> NaN
    np.testing.assert_allclose(dice_per_class(pred, label, 4), [0.5, 1.0, np.nan])


def test_dice_matches_monai_dice_metric():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(12, 10, 8))
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 4, size=label.shape))
    to_onehot = lambda a: one_hot(torch.as_tensor(a)[None, None], num_classes=4)  # noqa: E731
    reference = DiceMetric(include_background=False, reduction="none")(to_onehot(pred), to_onehot(label))
    np.testing.assert_allclose(dice_per_class(pred, label, 4), reference[0].numpy(), atol=1e-6)


def test_trivial_dice_formula():
    label = np.zeros((10, 10), dtype=np.int64)
    label[:2, :5] = 1  # 10 of 100 voxels
    # predicting class 1 everywhere: 2 * 10 / (10 + 100)
    np.testing.assert_allclose(trivial_dice(label, 3), [20 / 110, np.nan])
    table = format_dice_table(["liver", "spleen"], np.array([0.9, np.nan]), trivial_dice(label, 3))
    assert "| liver | 0.900 | 0.182 |" in table and "spleen" not in table


def test_overlay_png(tmp_path):
    image = np.random.default_rng(0).random((16, 16, 4))
    label = np.zeros((16, 16, 4), dtype=np.int64)
    label[4:10, 4:10, 2] = 1
    path = save_overlay(image, label, label, tmp_path / "overlay.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
