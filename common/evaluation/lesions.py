"""Lesion classification from a segmentation network's frozen encoder (linear probe, ROC AUC).

SuPreM (Li et al., ICLR 2024) evaluates its supervised pre-trained 3D segmentation networks (U-Net,
SegResNet, Swin UNETR) beyond segmentation by tumour classification from the encoder, reported as ROC AUC.
This module does the same on the embedded lesion cases (``data_lists/lesions.json``: pyradiomics' brain,
breast and lung lesions with manual masks): patches centred on lesion voxels versus patches of body tissue
that contain no lesion voxel, the encoder's pooled features
(:func:`common.networks.features.encoder_features`) of each patch, and a logistic-regression head
evaluated by leave-one-case-out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt
from monai.metrics import compute_roc_auc
from torch import nn
from tqdm.auto import tqdm

from ..data.cache import dataset_dir as default_dataset_dir
from ..data.datalists import read_key
from ..networks.features import encoder_features
from ..transforms.builders import load_transforms
from .figures import new_figure, save_figure

INTENSITY_OF_MODALITY = {"CT": "ct", "MR": "mr"}
BODY_THRESHOLD_HU = -500.0


def _resolve(path: str | os.PathLike, base: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else base / path


def _box_counts(mask: np.ndarray, roi: Sequence[int]) -> np.ndarray:
    """Number of ``mask`` voxels in the ``roi`` box centred (at index ``roi // 2``) on every voxel.

    A summed-area table of the mask zero-padded by the box's extent; exact integer counts in O(voxels).
    """
    lo = [r // 2 for r in roi]  # voxels before the centre
    hi = [r - r // 2 - 1 for r in roi]  # voxels after the centre
    padded = np.pad(mask.astype(np.int64), [(a + 1, b) for a, b in zip(lo, hi, strict=True)])
    table = padded.cumsum(0).cumsum(1).cumsum(2)
    n0, n1, n2 = mask.shape
    r0, r1, r2 = roi

    def t(a: int, b: int, c: int) -> np.ndarray:
        return table[a : a + n0, b : b + n1, c : c + n2]

    return (
        t(r0, r1, r2)
        - t(0, r1, r2)
        - t(r0, 0, r2)
        - t(r0, r1, 0)
        + t(0, 0, r2)
        + t(0, r1, 0)
        + t(r0, 0, 0)
        - t(0, 0, 0)
    )


def lesion_patches(
    item: dict,
    dataset_dir: str | os.PathLike,
    roi_size: Sequence[int] = (32, 32, 32),
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    patches_per_class: int = 8,
    seed: int = 0,
    ct_window: Sequence[float] = (-175.0, 250.0),
    return_masks: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Lesion and non-lesion patches of one case: ``(patches (N, 1, *roi_size), labels (N,))``, 1 = lesion.

    ``item`` is a datalist entry with ``image``, ``label`` (lesion mask, non-zero = lesion) and
    ``modality`` (``CT`` or ``MR``), paths relative to ``dataset_dir``. The case is loaded with
    :func:`common.transforms.builders.load_transforms`: oriented to RAS, resampled to ``pixdim`` and
    normalised (``ct``: the HU window ``ct_window`` to [0, 1]; ``mr``: z-score of the non-zero voxels), then
    zero-padded by half a patch on each side (zero is background in both normalisations), so that every
    voxel can be a patch centre and the volume is at least ``roi_size``.

    Positive patches are centred (at index ``roi_size // 2``) on random lesion voxels; negative patches on
    random body voxels (CT: above -500 HU before normalisation, i.e. tissue; MR: non-zero) whose patch
    contains no lesion voxel. ``patches_per_class`` of each, positives first; drawn without replacement
    where there are enough positions. Deterministic for a ``seed``.

    With ``return_masks``, also returns the lesion mask's patches at the same positions
    (``(N, 1, *roi_size)``, uint8), for checks and figures.

    Raises ``ValueError`` naming the file when the mask has no lesion voxel or when no negative position
    exists (lesion too large or body too small for ``roi_size``).
    """
    modality = str(item.get("modality", "")).upper()
    if modality not in INTENSITY_OF_MODALITY:
        raise ValueError(f"{item.get('image')}: modality {item.get('modality')!r} is not one of CT, MR")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3:
        raise ValueError(f"roi_size must have 3 values, got {roi_size}")
    base = Path(dataset_dir)
    image_file, label_file = _resolve(item["image"], base), _resolve(item["label"], base)
    steps = load_transforms(
        ["image", "label"], 3, 1, pixdim, INTENSITY_OF_MODALITY[modality], ct_window, image_key="image"
    )
    *geometry, normalise = steps  # body mask from the raw intensities, before normalisation
    data = mt.Compose(geometry)({"image": str(image_file), "label": str(label_file)})
    raw = data["image"][0].detach().cpu().numpy()
    lesion = data["label"][0].detach().cpu().numpy() > 0
    body = raw > BODY_THRESHOLD_HU if modality == "CT" else raw != 0
    image = np.asarray(normalise(data)["image"][0].detach().cpu().numpy(), dtype=np.float32)

    positive = np.argwhere(lesion)
    if len(positive) == 0:
        raise ValueError(f"{label_file}: the lesion mask has no lesion voxel")
    negative = np.argwhere(body & (_box_counts(lesion, roi) == 0))
    if len(negative) == 0:
        raise ValueError(
            f"{label_file}: no negative position: every {roi} patch centred on a body voxel of {image_file} "
            "contains a lesion voxel"
        )

    rng = np.random.default_rng(seed)

    def draw(candidates: np.ndarray) -> np.ndarray:
        replace = len(candidates) < patches_per_class
        return candidates[rng.choice(len(candidates), patches_per_class, replace=replace)]

    centres = np.concatenate([draw(positive), draw(negative)])
    before = [r // 2 for r in roi]
    padding = [(b, r - b) for b, r in zip(before, roi, strict=True)]

    def crop(volume: np.ndarray) -> torch.Tensor:
        padded = np.pad(volume, padding)
        # In padded coordinates the patch centred on voxel c starts at c (c + before - before).
        cut = [padded[c0 : c0 + roi[0], c1 : c1 + roi[1], c2 : c2 + roi[2]] for c0, c1, c2 in centres]
        return torch.from_numpy(np.stack(cut)[:, None].copy())

    labels = torch.from_numpy(np.repeat([1, 0], patches_per_class)).long()
    if return_masks:
        return crop(image), labels, crop(lesion.astype(np.uint8))
    return crop(image), labels


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float) -> nn.Linear:
    """Logistic regression ``nn.Linear(C, 1)`` on (standardised) ``features``: mean binary cross-entropy
    plus ``l2 / 2 * |w|^2`` (bias unpenalised), minimised by L-BFGS from zero weights (deterministic;
    the problem is convex, so the minimum does not depend on the start)."""
    head = nn.Linear(features.shape[1], 1).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    x, y = features.double(), labels.double()
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=1000,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(head(x)[:, 0], y)
        loss = loss + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return head


def _roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (tied scores move together)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.diff(s) != 0, True]  # last index of each group of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels)))


def _save_roc(path: Path, scores: np.ndarray, labels: np.ndarray, auc: float, title: str) -> None:
    fpr, tpr = _roc_points(scores, labels)
    fig = new_figure((4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"leave-one-case-out, AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def lesion_classification(
    network: nn.Module,
    datalist_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    roi_size: Sequence[int] = (32, 32, 32),
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    patches_per_class: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    datalist_key: str = "training",
    l2: float = 1e-2,
    batch_size: int = 8,
    patch_sets: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Lesion-versus-tissue classification from ``network``'s frozen encoder, by leave-one-case-out ROC AUC.

    The evaluation of SuPreM (Li et al., ICLR 2024) that scores a segmentation network's encoder by tumour
    classification (ROC AUC), here on the cases of ``datalist_file[datalist_key]``
    (``data_lists/lesions.json``):

    1. :func:`lesion_patches` of every case (``patches_per_class`` lesion and non-lesion patches).
    2. Frozen encoder features of every patch: :func:`common.networks.features.encoder_features` in eval
       mode without gradients (the network's training mode is restored afterwards).
    3. For each case, a logistic-regression head (``nn.Linear(C, 1)`` on features standardised with the
       training fold's mean and standard deviation, l2 penalty ``l2``, L-BFGS to convergence) is trained on
       the other cases' patches and scores this case's patches (out-of-fold scores).
    4. ROC AUC (``monai.metrics.compute_roc_auc``) of the pooled out-of-fold scores, lesion versus
       non-lesion patch, and of each case's own scores.

    Writes ``<output_dir>/lesion_classification.json`` (the returned dict, atomically) and the pooled ROC
    curve ``<output_dir>/lesion_roc.png``. Returns ``auc`` (pooled), ``cases`` (per case: ``subject``,
    ``site``, ``modality``, ``auc``, ``num_patches``), ``feature_dim``, ``num_patches``, the out-of-fold
    ``scores`` (lesion probabilities), ``labels`` and ``subjects`` of every patch, and the settings.
    ``patch_sets`` (one :func:`lesion_patches` result per case, in datalist order, made with the same
    settings) skips loading the cases again when several networks are compared.
    """
    items = read_key(datalist_file, datalist_key)
    if patch_sets is not None and len(patch_sets) != len(items):
        raise ValueError(f"{datalist_file}: {len(items)} cases but {len(patch_sets)} patch sets given")
    if len(items) < 2:
        raise ValueError(f"{datalist_file}: leave-one-case-out needs at least 2 cases, found {len(items)}")
    base = Path(dataset_dir) if dataset_dir is not None else default_dataset_dir()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    subjects = [str(item.get("subject", Path(item["image"]).name.split(".")[0])) for item in items]

    was_training = network.training
    network.to(device).eval()
    features, labels = [], []
    try:
        with torch.no_grad():
            for i, item in enumerate(tqdm(items, desc="lesion features", unit="case")):
                if patch_sets is not None:
                    patches, y = patch_sets[i]
                else:
                    patches, y = lesion_patches(item, base, roi_size, pixdim, patches_per_class, seed)
                feats = [
                    encoder_features(network, batch.to(device)).float().cpu()
                    for batch in patches.split(batch_size)
                ]
                features.append(torch.cat(feats))
                labels.append(y)
    finally:
        network.train(was_training)

    scores = []
    for k in range(len(items)):
        train_x = torch.cat([f for i, f in enumerate(features) if i != k]).double()
        train_y = torch.cat([t for i, t in enumerate(labels) if i != k])
        mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        head = _fit_logistic((train_x - mean) / std, train_y, l2)
        with torch.no_grad():
            scores.append(torch.sigmoid(head((features[k].double() - mean) / std)[:, 0]))

    all_scores = torch.cat(scores).numpy()
    all_labels = torch.cat(labels).numpy()
    pooled_auc = _auc(all_scores, all_labels)
    cases = [
        {
            "subject": subject,
            "site": item.get("site"),
            "modality": item.get("modality"),
            "auc": _auc(s.numpy(), y.numpy()),
            "num_patches": len(y),
        }
        for item, subject, s, y in zip(items, subjects, scores, labels, strict=True)
    ]
    result = {
        "auc": pooled_auc,
        "evaluation": "leave-one-case-out logistic regression on frozen encoder features",
        "network": type(network).__name__,
        "feature_dim": int(features[0].shape[1]),
        "num_patches": len(all_labels),
        "cases": cases,
        "scores": [float(s) for s in all_scores],
        "labels": [int(y) for y in all_labels],
        "subjects": [subject for subject, y in zip(subjects, labels, strict=True) for _ in range(len(y))],
        "settings": {
            "datalist": str(datalist_file),
            "roi_size": [int(r) for r in roi_size],
            "pixdim": [float(p) for p in pixdim],
            "patches_per_class": patches_per_class,
            "seed": seed,
            "l2": l2,
        },
    }
    out_json = output_dir / "lesion_classification.json"
    tmp = out_json.with_name(out_json.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out_json)
    _save_roc(
        output_dir / "lesion_roc.png",
        all_scores,
        all_labels,
        pooled_auc,
        f"Lesion classification, {type(network).__name__} encoder",
    )
    return result
