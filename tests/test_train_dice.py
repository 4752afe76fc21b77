"""The segmentation bundles' training and validation Dice is computed from label maps (MONAI's ``MeanDice``
with ``num_classes``: argmax of the prediction against the label, no one-hot of either; issue 21, the
engine's per-iteration cost) and gives the numbers the one-hot path gave: softmax (then the partial-label
merge), argmax, one-hot of both, ``DiceMetric(include_background=False)``."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric
from monai.transforms import Activations, AsDiscrete

from common.evaluation.bundle_runs import bundle_dir
from common.transforms import MergeUnannotatedd


def _parsed(bundle, *keys):
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "train.json"))
    parser.update({"num_workers": 0, "cache_rate": 0.0})
    return [parser.get_parsed_content(key) for key in keys]


@pytest.mark.parametrize("bundle", ["multiorgan_ct_segmentation", "suprem_pretrain"])
def test_label_map_dice_equals_the_one_hot_dice(bundle):
    postprocessing, metrics, num_classes = _parsed(
        bundle, "train#postprocessing", "train#key_metric", "num_classes"
    )
    (handler,) = metrics.values()
    torch.manual_seed(0)
    logits = torch.randn(3, num_classes, 12, 12, 12) * 3
    labels = torch.randint(0, num_classes // 2, (3, 1, 12, 12, 12))  # classes above C/2 absent: NaN, skipped
    annotated = torch.rand(3, num_classes) > 0.3
    annotated[:, 0] = True
    samples = [
        {"pred": p, "label": y, "annotated": a} for p, y, a in zip(logits, labels, annotated, strict=True)
    ]

    new = [postprocessing(dict(s)) for s in samples]
    assert all(s["pred"].shape == (1, 12, 12, 12) and s["label"].shape == (1, 12, 12, 12) for s in new)
    handler.metric_fn.reset()
    handler.metric_fn(torch.stack([s["pred"] for s in new]), torch.stack([s["label"] for s in new]))

    one_hot = AsDiscrete(to_onehot=num_classes)
    reference = DiceMetric(include_background=False)
    for sample in samples:
        prob = Activations(softmax=True)(sample["pred"])
        if bundle == "suprem_pretrain":
            prob = MergeUnannotatedd("pred")({"pred": prob, "annotated": sample["annotated"]})["pred"]
        reference(one_hot(prob.argmax(0, keepdim=True))[None], one_hot(sample["label"])[None])
    expected = reference.aggregate()
    assert torch.isfinite(expected) and torch.allclose(handler.metric_fn.aggregate(), expected)
    assert torch.equal(torch.isnan(handler.metric_fn.get_buffer()), torch.isnan(reference.get_buffer()))
