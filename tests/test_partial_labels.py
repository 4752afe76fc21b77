"""Partial labels (SuPreM): the unified class space, the marginal Dice + CE loss, merging and metrics."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from common.data.cache import DATA_LISTS_DIR
from common.data.partial_labels import (
    ABDOMENATLAS_CLASSES,
    SUPREM_CLASSES,
    annotated_mask,
    apply_id_map,
    unified_id_map,
)
from common.evaluation.segmentation import dice_per_class
from common.losses import PartialLabelDiceCELoss, merged_log_probs
from common.transforms import AnnotatedClassesd, MergeUnannotatedd

CLASSES = ("background", "liver", "lung_left", "spleen")


def test_unified_id_map_merges_aliases_and_lists_annotated_classes():
    source = {3: "lung_upper_lobe_left", 4: "lung_lower_lobe_left", 7: "liver", 9: "heart"}
    id_map, annotated = unified_id_map(source, CLASSES)
    assert id_map == {7: 1, 3: 2, 4: 2}
    assert annotated == ["liver", "lung_left"]  # spleen is not named by the source: not annotated
    np.testing.assert_array_equal(
        apply_id_map(np.array([[0, 3, 4], [7, 9, 0]]), id_map), [[0, 2, 2], [1, 0, 0]]
    )
    np.testing.assert_array_equal(annotated_mask(annotated, CLASSES), [True, True, True, False])
    with pytest.raises(KeyError, match="kidney"):
        annotated_mask(["kidney"], CLASSES)


def test_abdomenatlas_list_has_25_structures():
    assert len(ABDOMENATLAS_CLASSES) == 26 and ABDOMENATLAS_CLASSES[0] == "background"
    assert SUPREM_CLASSES[-1] == "lung_tumor"


def test_real_sources_annotate_different_subsets_and_labels_stay_inside_them(prepared_data):
    datalist = json.loads((DATA_LISTS_DIR / "suprem_ct.json").read_text())
    sources = datalist["sources"]
    assert sources["pyradiomics_lung"]["annotated"] == ["lung_tumor"]
    organs = set(sources["totalsegmentator"]["annotated"])
    assert {"liver", "spleen", "lung_left", "postcava", "intestine"} <= organs
    assert not organs & {
        "hepatic_vessel",
        "celiac_trunk",
        "rectum",
        "lung_tumor",
    }  # TotalSegmentator lacks them
    names = [datalist["labels"][str(i)] for i in range(len(datalist["labels"]))]
    assert names == list(SUPREM_CLASSES)
    for item in datalist["training"] + datalist["validation"]:
        label = np.asarray(nib.load(prepared_data / item["label"]).dataobj)
        present = {names[v] for v in np.unique(label) if v}
        assert present and present <= set(sources[item["source"]]["annotated"]), item["label"]


def reference_loss(logits, target, annotated, include_background, batch, smooth=1e-5):
    """Naive float64 loop: per voxel merged probabilities, per (sample, class) Dice sums."""
    logits, target = logits.double(), target[:, 0]
    b_size, c_size = logits.shape[:2]
    voxels = logits[0, 0].numel()
    inter = torch.zeros(b_size, c_size, dtype=torch.float64)
    total = torch.zeros(b_size, c_size, dtype=torch.float64)
    ce = 0.0
    for b in range(b_size):
        for v in range(voxels):
            z = logits[b].reshape(c_size, -1)[:, v]
            p = [math.exp(z[c]) / sum(math.exp(zz) for zz in z) for c in range(c_size)]
            q = [p[0] + sum(p[c] for c in range(1, c_size) if not annotated[b, c])]
            q += [p[c] if annotated[b, c] else 0.0 for c in range(1, c_size)]
            y = int(target[b].reshape(-1)[v])
            ce -= math.log(q[y])
            for c in range(c_size):
                inter[b, c] += q[c] * (c == y)
                total[b, c] += q[c] + (c == y)
    first = 0 if include_background else 1
    inter, total, mask = inter[:, first:], total[:, first:], annotated[:, first:]
    if batch:
        terms = [
            1 - (2 * inter[mask[:, c], c].sum() + smooth) / (total[mask[:, c], c].sum() + smooth)
            for c in range(inter.shape[1])
            if mask[:, c].any()
        ]
    else:
        terms = [
            1 - (2 * inter[b, c] + smooth) / (total[b, c] + smooth)
            for b in range(inter.shape[0])
            for c in range(inter.shape[1])
            if mask[b, c]
        ]
    return float(sum(terms) / len(terms) + ce / (b_size * voxels))


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_loss_matches_naive_loop(batch, include_background):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 3, 2, 2, generator=gen)
    annotated = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    target = torch.randint(0, 4, (3, 1, 3, 2, 2), generator=gen)
    for b in range(3):  # labels only use the sample's annotated classes
        allowed = annotated[b].nonzero().flatten()
        target[b] = allowed[target[b] % len(allowed)]
    loss = PartialLabelDiceCELoss(include_background=include_background, batch=batch)
    got = loss(logits, target, annotated)
    expected = reference_loss(logits, target, annotated, include_background, batch)
    assert got.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("batch", [False, True])
def test_fully_annotated_equals_monai_dice_ce(batch):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, 5, 4, generator=gen)
    target = torch.randint(0, 5, (2, 1, 6, 5, 4), generator=gen)
    expected = DiceCELoss(to_onehot_y=True, softmax=True, batch=batch)(logits, target)
    got = PartialLabelDiceCELoss(batch=batch)(logits, target, torch.ones(2, 5, dtype=torch.bool))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_hand_worked_cross_entropy_folds_unannotated_into_background():
    # One voxel labelled background; p = (0.2, 0.1, 0.7) and class 2 is not annotated:
    # the merged background probability is 0.2 + 0.7 = 0.9, so CE = -log 0.9 (plain CE: -log 0.2).
    logits = torch.log(torch.tensor([0.2, 0.1, 0.7])).view(1, 3, 1, 1, 1)
    target = torch.zeros(1, 1, 1, 1, 1)
    partial = PartialLabelDiceCELoss(lambda_dice=0.0)(logits, target, torch.tensor([[True, True, False]]))
    assert partial.item() == pytest.approx(-math.log(0.9), abs=1e-6)
    full = PartialLabelDiceCELoss(lambda_dice=0.0)(logits, target, torch.ones(1, 3, dtype=torch.bool))
    assert full.item() == pytest.approx(-math.log(0.2), abs=1e-6)


def test_hand_worked_dice_over_annotated_classes_only():
    # Two voxels labelled (0, 1); probabilities per voxel (0.5, 0.25, 0.25) and (0.25, 0.5, 0.25); class 2
    # unannotated. Merged: background q = (0.75, 0.5), class 1 q = (0.25, 0.5).
    # Dice_bg = 2*0.75 / (1.25 + 1) = 2/3; Dice_1 = 2*0.5 / (0.75 + 1) = 4/7. Loss = 1 - (2/3 + 4/7) / 2.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]).T.reshape(1, 3, 2, 1, 1)
    target = torch.tensor([0.0, 1.0]).reshape(1, 1, 2, 1, 1)
    loss = PartialLabelDiceCELoss(lambda_ce=0.0, smooth=0.0)(
        probs.log(), target, torch.tensor([[1, 1, 0]]).bool()
    )
    assert loss.item() == pytest.approx(1 - (2 / 3 + 4 / 7) / 2, abs=1e-6)


def test_unannotated_class_is_not_penalised_but_annotated_one_is():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 4, 4, 4, generator=gen)
    target = torch.randint(0, 2, (1, 1, 4, 4, 4), generator=gen)
    background = target[:, 0] == 0
    annotated = torch.tensor([[True, True, True, False]])
    loss = PartialLabelDiceCELoss()
    base = loss(logits, target, annotated)
    # Moving probability from background to the unannotated class 3 on background voxels: same loss.
    shifted = logits.clone()
    p = logits.softmax(1)
    moved = p.clone()
    moved[:, 3] = torch.where(background, p[:, 0] * 0.9 + p[:, 3], p[:, 3])
    moved[:, 0] = torch.where(background, p[:, 0] * 0.1, p[:, 0])
    shifted = moved.log()
    assert loss(shifted, target, annotated).item() == pytest.approx(base.item(), abs=1e-5)
    # The same move to the annotated class 2 is an error the loss must see.
    wrong = p.clone()
    wrong[:, 2] = torch.where(background, p[:, 0] * 0.9 + p[:, 2], p[:, 2])
    wrong[:, 0] = torch.where(background, p[:, 0] * 0.1, p[:, 0])
    assert loss(wrong.log(), target, annotated).item() > base.item() + 0.1


def test_merged_log_probs_are_a_distribution_over_annotated_classes():
    logits = torch.randn(2, 4, 3, 3, 3)
    annotated = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]]).bool()
    q = merged_log_probs(logits, annotated).exp()
    torch.testing.assert_close(q.sum(1), torch.ones(2, 3, 3, 3))
    assert (q[0, 1] == 0).all() and (q[0, 3] == 0).all()


def test_loss_errors_are_clear():
    logits, target = torch.randn(1, 3, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 2.0)
    with pytest.raises(ValueError, match="class 2, which its annotated classes exclude"):
        PartialLabelDiceCELoss()(logits, target, torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="AnnotatedClassesHandler"):
        PartialLabelDiceCELoss()(logits, target)
    with pytest.raises(ValueError, match="expected \\(batch, classes\\)"):
        PartialLabelDiceCELoss()(logits, target, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="background"):
        PartialLabelDiceCELoss()(logits, target, torch.tensor([[False, True, True]]))


def test_dice_per_class_skips_unannotated_classes():
    label = np.array([0, 1, 1, 0, 0, 0])
    pred = np.array([0, 1, 1, 2, 2, 3])  # class 2 predicted where the source annotates nothing of it
    full = dice_per_class(pred, label, 4)
    np.testing.assert_array_equal(
        full, [1.0, 0.0, 0.0]
    )  # without annotation info, 2 and 3 are false positives
    partial = dice_per_class(pred, label, 4, annotated=[True, True, False, True])
    np.testing.assert_array_equal(partial[[0, 2]], [1.0, 0.0])
    assert np.isnan(partial[1])


def test_annotated_classesd_and_merge_unannotatedd():
    sources = {"lungs": {"annotated": ["lung_left"]}, "abdomen": ["liver", "spleen"]}
    add = AnnotatedClassesd(sources, CLASSES)
    item = add({"image": "/data/a.nii.gz", "source": "lungs"})
    assert item["annotated"].tolist() == [True, False, True, False]
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1, 1).repeat(1, 2, 2, 2)
    merged = MergeUnannotatedd("pred")({"pred": probs, "annotated": item["annotated"]})["pred"]
    torch.testing.assert_close(merged[:, 0, 0, 0], torch.tensor([0.7, 0.0, 0.3, 0.0]))
    with pytest.raises(KeyError, match="/data/b.nii.gz: unknown source 'ct'"):
        add({"image": "/data/b.nii.gz", "source": "ct"})
    with pytest.raises(KeyError, match="/data/c.nii.gz: datalist item has no 'source' key"):
        add({"image": "/data/c.nii.gz"})
