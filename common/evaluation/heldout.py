"""Few-shot fine-tuning of the segmentation bundle and its evaluation on the held-out CT subject.

One path shared by the demo and the pre-training transfer study: ``monai.bundle`` training of
``multiorgan_ct_segmentation`` (optionally from an encoder file), ``evaluate.json`` on the held-out subject,
then per-class Dice against the label at the evaluation spacing, beside the trivial predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import run
from monai.data import load_decathlon_datalist

from ..bundle import REPO_ROOT, bundle_root, class_names
from ..data import dataset_dir
from ..transforms import segmentation_transforms
from .segmentation import dice_per_class, trivial_dice

SEGMENTATION_BUNDLE = "multiorgan_ct_segmentation"
DATALIST = REPO_ROOT / "data_lists" / "multiorgan_ct.json"


@dataclass
class HeldOutResult:
    """Per-class Dice (classes 1..K-1, NaN where a class is absent) with the arrays it was computed on."""

    names: list[str]
    dice: np.ndarray
    baseline: np.ndarray
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    subject: str

    @property
    def mean_dice(self) -> float:
        return float(np.nanmean(self.dice))

    def dice_of(self, name: str) -> float:
        return float(self.dice[self.names.index(name)])


def finetune_and_evaluate(overrides: dict, tracking: str | None = None) -> HeldOutResult:
    """Train the segmentation bundle with ``overrides`` (``ckpt_dir`` and ``output_dir`` among them),
    evaluate its ``models/model.pt`` on the held-out subject, and score the saved prediction."""
    configs = Path(bundle_root(SEGMENTATION_BUNDLE)) / "configs"
    run("training", config_file=str(configs / "train.json"), tracking=tracking, **overrides)
    run("evaluating", config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], **overrides)
    return score_heldout(Path(overrides["output_dir"]), overrides["pixdim"])


def score_heldout(eval_dir: Path, pixdim, datalist: Path = DATALIST, annotated=None) -> HeldOutResult:
    """Dice of the prediction ``<eval_dir>/<subject>_seg.nii.gz`` against the held-out label of
    ``datalist`` (its ``test`` key), both at ``pixdim`` (the evaluation pipeline's spacing, where the
    prediction was saved). ``annotated`` (one bool per class) leaves classes the label's source does not
    annotate out (NaN), as :func:`~common.evaluation.segmentation.dice_per_class` does."""
    names = class_names(str(datalist))
    item = load_decathlon_datalist(str(datalist), True, "test", str(dataset_dir()))[0]
    sample = segmentation_transforms("val", pixdim=pixdim)(item)
    image, label = sample["image"][0].numpy(), sample["label"][0].numpy().astype(np.int64)
    pred_file = Path(eval_dir) / (Path(item["image"]).name.split(".")[0] + "_seg.nii.gz")
    pred = np.asarray(nib.load(pred_file).dataobj).squeeze().astype(np.int64)
    return HeldOutResult(
        names=names[1:],
        dice=dice_per_class(pred, label, len(names), annotated),
        baseline=trivial_dice(label, len(names)),
        image=image,
        label=label,
        pred=pred,
        subject=str(item.get("subject", item["image"])),
    )
