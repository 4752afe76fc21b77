"""The frozen-encoder classification protocols of DINOv2-radiology (papers/004, Sec. 3.3.1) run on a
bundle's datalist: kNN, linear probing with the feature view chosen on validation, and few-shot linear
probing, each scored on the test key by the mean ROC AUC over classes (and accuracy, multi-class).

:func:`run_probes` is what the classification bundles' ``configs/probe.json`` calls
(``python -m monai.bundle run probing --config_file "['train.json','probe.json']"``); it writes
``probes.json`` (every row) and ``probes.md`` (a table) to its output folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from torch import nn

from ..atomic import atomic_path
from ..data.validation import load_datalist
from .fewshot import run_fewshot_linear
from .probes import accuracy, extract_views, knn_predict, linear_probe, mean_auroc

SPLITS = ("training", "validation", "test")
TOKEN_VIEWS = ("cls", "cls+mean_patch")


def _features(encoder, loader, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every available view: the pooled embedding, and the token views where the encoder has a [CLS]."""
    try:
        return extract_views(encoder, loader, ("pooled", *TOKEN_VIEWS), device=device)
    except (ValueError, AttributeError):  # no [CLS] token (Swin, ConvNeXt, slice-averaged encoders)
        return extract_views(encoder, loader, ("pooled",), device=device)


def _scores(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    summary = mean_auroc(scores, labels)
    row = {"mean_auroc": summary.mean, "skipped_classes": list(summary.skipped)}
    if labels.ndim == 1:
        row["accuracy"] = accuracy(scores, labels)
    return row


def run_probes(
    encoder: nn.Module,
    datalist_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    transform: Callable,
    output_dir: str | os.PathLike,
    spatial_dims: int = 2,
    k: int = 20,
    temperature: float = 0.07,
    knn_multilabel: str = "mlknn",
    shots: Sequence[int] = (1, 2, 4, 8),
    seeds: Sequence[int] = (0, 1, 2),
    subject_key: str = "subject",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """kNN, linear and few-shot linear probing of ``encoder`` on ``datalist_file``'s training /
    validation / test keys (items through ``transform``, which must give ``image`` and ``label``).

    Linear probing fits every available view (pooled; [CLS] and [CLS] + mean patch for encoders with a [CLS]
    token) and keeps the one with the best validation AUROC; kNN uses [CLS] where there is one, the pooled
    embedding otherwise, and for multi-label labels ``knn_multilabel`` (ML-kNN, or the ``"weighted"`` vote,
    :func:`~common.evaluation.probes.knn_predict`). Few-shot draws ``shots`` subjects per class
    (``subject_key``) per seed; a shot count that some class cannot supply is reported as skipped with the
    reason. Returns the rows it writes."""
    encoder = encoder.to(device)
    items = {
        s: load_datalist(datalist_file, s, dataset_dir, spatial_dims=spatial_dims, label_key="")
        for s in SPLITS
    }
    features, labels = {}, {}
    for split in SPLITS:
        loader = DataLoader(Dataset(items[split], transform), batch_size=batch_size, shuffle=False)
        features[split], labels[split] = _features(encoder, loader, device)
    views = list(features["training"])
    knn_view = "cls" if "cls" in views else "pooled"
    rows = []
    knn = knn_predict(
        features["training"][knn_view],
        labels["training"],
        features["test"][knn_view],
        k,
        temperature,
        multilabel=knn_multilabel,
    )
    rows.append({"protocol": "knn", "view": knn_view, "k": k, **_scores(knn, labels["test"])})
    probes = {
        view: linear_probe(
            features["training"][view], labels["training"], features["validation"][view], labels["validation"]
        )
        for view in views
    }
    view = max(views, key=lambda v: probes[v].val_score)
    test_scores = probes[view].predict_scores(features["test"][view])
    rows.append(
        {
            "protocol": "linear",
            "view": view,
            "val_auroc": probes[view].val_score,
            **_scores(test_scores, labels["test"]),
        }
    )
    subjects = [item.get(subject_key, item["image"]) for item in items["training"]]
    for shot in shots:
        try:
            fewshot = run_fewshot_linear(
                features["training"][view],
                labels["training"],
                subjects,
                features["validation"][view],
                labels["validation"],
                features["test"][view],
                labels["test"],
                shots=(shot,),
                seeds=seeds,
            )
        except ValueError as err:
            rows.append({"protocol": f"fewshot_{shot}", "view": view, "skipped": str(err)})
            continue
        aurocs = [r["mean_auroc"] for r in fewshot]
        mean = sum(aurocs) / len(aurocs)
        sd = (sum((a - mean) ** 2 for a in aurocs) / max(1, len(aurocs) - 1)) ** 0.5
        rows.append(
            {"protocol": f"fewshot_{shot}", "view": view, "mean_auroc": mean, "sd": sd, "runs": fewshot}
        )
    write_probe_report(rows, Path(output_dir))
    return rows


def write_probe_report(rows: list[dict], output_dir: Path) -> None:
    """``probes.json`` (every row) and ``probes.md`` (protocol, view, test mean AUROC) in ``output_dir``."""
    with atomic_path(output_dir / "probes.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=2, default=float) + "\n")
    lines = ["| protocol | view | test mean AUROC | note |", "|---|---|---:|---|"]
    for row in rows:
        value = f"{row['mean_auroc']:.3f}" if "mean_auroc" in row else "—"
        if "sd" in row:
            value += f" ± {row['sd']:.3f}"
        note = row.get("skipped", f"accuracy {row['accuracy']:.3f}" if "accuracy" in row else "")
        lines.append(f"| {row['protocol']} | {row['view']} | {value} | {note} |")
    with atomic_path(output_dir / "probes.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
