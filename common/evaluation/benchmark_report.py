"""The encoder analyses of a study's report (:mod:`common.study.report`, section ``encoders``).

:func:`encoder_sections` takes the finished cells of a segmentation task of SwinUNETR encoders (rows with
``method`` = the encoder's name, ``shots``, ``seed``, ``mean_dice``, ``encoder_file`` and the cell's folder
``out``, whose ``models/model_final.pt`` is the fine-tuned network) and returns the report sections:

1. layer-wise linear CKA between each pre-trained encoder and the encoder fine-tuned from it
   (:func:`~common.evaluation.report.cka_figure`);
2. t-SNE and PCA of organ-patch embeddings and zero-shot retrieval precision@K per encoder
   (:func:`~common.evaluation.report.organ_embedding_figures`);
3. patch-feature PCA as RGB of the held-out CT per encoder
   (:func:`~common.evaluation.report.patch_pca_figure`);
4. lesion classification from each frozen encoder (:func:`~common.evaluation.lesions.lesion_classification`,
   leave-one-case-out ROC AUC);
5. the cross-task rank plot: each encoder's mean rank over the segmentation settings versus over the two
   classification tasks (lesion AUC, organ retrieval precision@K)
   (:func:`~common.evaluation.curves.cross_task_rank_plot`).

:func:`organ_table` is the per-class table of the ``per_class`` section. "scratch" (an encoder without a
file) appears in the encoder analyses as the randomly initialised Swin encoder (seeded), i.e. what
training from scratch starts from.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import load_decathlon_datalist

from ..bundle import class_names
from ..data import dataset_dir
from .heldout import DATALIST
from .matrix import ORGANS
from .report import _fmt

__all__ = ["encoder_sections", "organ_table"]

LESION_DATALIST = DATALIST.parent / "lesions.json"


def method_encoders(rows: Sequence[Mapping]) -> dict[str, Path | None]:
    """``{method: encoder file}`` in order of first appearance (``None`` for a method without one)."""
    out: dict[str, Path | None] = {}
    for row in rows:
        path = str(row.get("encoder_file") or "").strip()
        if row["method"] not in out or (out[row["method"]] is None and path):
            out[row["method"]] = Path(path) if path else None
    return out


def finetuned_checkpoint(rows: Sequence[Mapping], method: str) -> Path | None:
    """The final checkpoint of ``method``'s cell with the most shots (lowest seed among them)."""
    cells = sorted(
        (row for row in rows if row["method"] == method),
        key=lambda row: (-int(row["shots"]), int(row["seed"])),
    )
    for row in cells:
        path = Path(row["out"]) / "models" / "model_final.pt"
        if path.is_file():
            return path
    return None


# ------------------------------------------------------------------ tables


def organ_table(rows: Sequence[Mapping], organs: Sequence[str] = ORGANS) -> str:
    """Markdown table: per (method, shots), the mean ± sd over seeds of each organ's Dice."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["shots"])), []).append(row)
    lines = ["| method | shots | " + " | ".join(organs) + " |", "|---|---:|" + "---|" * len(organs)]
    for (method, shots), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] != "scratch")):
        cells = []
        for organ in organs:
            values = np.array([float(r[organ]) for r in members if r.get(organ) not in ("", None)])
            values = values[np.isfinite(values)]
            sd = values.std(ddof=1) if values.size > 1 else math.nan
            cells.append(f"{_fmt(values.mean() if values.size else math.nan)} ± {_fmt(sd)}")
        lines.append(f"| {method} | {shots} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _score_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(str(v) if isinstance(v, str) else _fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ encoders


def swin_encoder(path: Path | None, feature_size: int, seed: int):
    """The Swin encoder of ``path`` (an encoder file), or a seeded random one for ``None`` (scratch)."""
    from common.networks import SwinEncoder, load_encoder

    torch.manual_seed(seed)
    encoder = SwinEncoder(in_channels=1, feature_size=feature_size)
    if path is not None:
        load_encoder(encoder, path)
    return encoder.eval()


def swin_segmenter(path: Path | None, feature_size: int, seed: int):
    """A SwinUNETR whose encoder comes from ``path`` (random, seeded, for ``None``): the network
    :func:`~common.evaluation.lesions.lesion_classification` takes features from."""
    from common.networks import build_segmenter

    torch.manual_seed(seed)
    return build_segmenter(
        "swinunetr", 1, len(class_names(str(DATALIST))), feature_size, pretrained_encoder=path
    )


def foreground_crops(image: torch.Tensor, label: torch.Tensor, roi: int, n: int, seed: int) -> torch.Tensor:
    """``n`` ``roi``-cubes of ``image`` centred on labelled voxels drawn with ``default_rng(seed)``."""
    from .report import crop_at

    coords = torch.nonzero(label[0] > 0).numpy()
    if len(coords) < n:
        raise ValueError(f"the label has {len(coords)} foreground voxels, fewer than {n} crops")
    picks = np.random.default_rng(seed).choice(len(coords), size=n, replace=False)
    return torch.stack([crop_at(image, coords[i], roi) for i in picks])


# ------------------------------------------------------------------ report


def _image(caption: str, path: Path, folder: Path) -> str:
    from .report import figure_link

    return f"![{caption}]({figure_link(path, folder)})"


def encoder_sections(
    rows: Sequence[Mapping],
    out: str | os.PathLike,
    feature_size: int,
    pixdim: float,
    seed: int = 0,
    patches_per_organ: int = 6,
    lesion_patches_per_class: int = 8,
    cka_crops: int = 4,
    k: int = 5,
) -> list[tuple[str, str]]:
    """The report sections of the encoder analyses (see the module docstring), figures under ``out``.

    ``patches_per_organ`` (organ embeddings), ``lesion_patches_per_class`` (lesion classification) and
    ``cka_crops`` (64³ crops of the held-out CT for CKA) size the analyses; ``seed`` fixes their draws and
    the scratch encoder's initialisation; ``k`` is the retrieval precision@K.
    """
    from ..data.datalists import read_key
    from .curves import cross_task_rank_plot, mean_ranks
    from .lesions import lesion_classification, lesion_patches
    from .report import (
        SWIN_LAYER_LABELS,
        cka_figure,
        load_labelled_ct,
        organ_embedding_figures,
        patch_pca_figure,
        results_rows,
    )

    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoders = method_encoders(rows)
    missing = {m: str(p) for m, p in encoders.items() if p is not None and not p.is_file()}
    if missing:
        raise FileNotFoundError(f"encoder file(s) of the cells not found: {missing}")

    def log(text: str) -> None:
        print(f"[report] {text} ({time.time() - start:.0f} s)", flush=True)

    names = class_names(str(DATALIST))
    base = str(dataset_dir())
    labelled = [
        *load_decathlon_datalist(str(DATALIST), True, "training", base),
        *load_decathlon_datalist(str(DATALIST), True, "test", base),
    ]
    cases = [load_labelled_ct(item, pixdim) for item in labelled]
    held_out = cases[-1]
    sections: list[tuple[str, str]] = []
    records = results_rows(rows)

    # 3. CKA
    log("CKA")
    inputs = foreground_crops(*held_out, roi=64, n=cka_crops, seed=seed)
    cka_rows, cka_images = [], []
    for method, path in encoders.items():
        checkpoint = finetuned_checkpoint(rows, method)
        if path is None or checkpoint is None:
            continue
        values = cka_figure(
            path,
            checkpoint,
            out / f"cka_{method}.png",
            inputs,
            feature_size=feature_size,
            out_channels=len(names),
            title=f"{method}: pre-trained vs fine-tuned ({checkpoint.parent.parent.name})",
        )
        cka_rows.append([method, *(values[layer] for layer in SWIN_LAYER_LABELS)])
        cka_images.append(_image(f"CKA {method}", out / f"cka_{method}.png", out))
    if cka_rows:
        body = _score_table(["encoder", *SWIN_LAYER_LABELS], cka_rows) + "\n" + "\n".join(cka_images)
        body += (
            f"\n\nLinear CKA on {cka_crops} crops of 64³ of the held-out CT (flattened feature maps) between "
            "the pre-trained encoder and the encoder of the network fine-tuned from it (cell with the most "
            "shots); 1 = same representation up to rotation and scale."
        )
    else:
        body = "No pre-trained encoder with a fine-tuned checkpoint in this matrix."
    sections.append(("Pre-trained vs fine-tuned encoder (linear CKA)", body))

    # 4-6. encoder analyses (cases and lesion patches loaded once for all encoders)
    lesion_sets = [
        lesion_patches(item, base, patches_per_class=lesion_patches_per_class, seed=seed)
        for item in read_key(LESION_DATALIST, "training")
    ]
    retrieval, lesion_auc, embedding_images, pca_images, roc_images = {}, {}, [], [], []
    for method, path in encoders.items():
        log(f"encoder analyses: {method}")
        encoder = swin_encoder(path, feature_size, seed)
        emb = organ_embedding_figures(
            encoder,
            labelled,
            names,
            out / f"embeddings_{method}",
            pixdim,
            per_class=patches_per_organ,
            seed=seed,
            k=k,
            cases=cases,
        )
        retrieval[method] = emb["precision_at_k"]
        tsne_image, pca_image = (
            _image(f"t-SNE {method}", emb["tsne"], out),
            _image(f"PCA {method}", emb["pca"], out),
        )
        embedding_images.append(f"**{method}**\n\n{tsne_image} {pca_image}")
        patch_pca_figure(encoder, held_out[0], out / f"patch_pca_{method}.png", title=f"{method}: patch PCA")
        pca_images.append(_image(f"patch PCA {method}", out / f"patch_pca_{method}.png", out))
        result = lesion_classification(
            swin_segmenter(path, feature_size, seed),
            LESION_DATALIST,
            out / f"lesions_{method}",
            patches_per_class=lesion_patches_per_class,
            seed=seed,
            patch_sets=lesion_sets,
        )
        lesion_auc[method] = result["auc"]
        roc_images.append(_image(f"ROC {method}", out / f"lesions_{method}" / "lesion_roc.png", out))
    sections.append(
        (
            "Organ embeddings",
            _score_table(["encoder", f"retrieval precision@{k}"], [[m, v] for m, v in retrieval.items()])
            + f"\nPooled encoder embeddings of {patches_per_organ} patches of 32³ per organ (the 8 largest "
            f"organs of {len(labelled)} labelled CTs at {pixdim:g} mm), coloured by organ; precision@{k}: "
            "share of each patch's nearest neighbours (cosine) from the same organ.\n\n"
            + "\n\n".join(embedding_images),
        )
    )
    sections.append(
        (
            "Patch-feature PCA (held-out CT, axial slice)",
            "First three principal components of stage-1 patch features as RGB, background (first "
            "component below 0) removed.\n\n" + "\n".join(pca_images),
        )
    )
    sections.append(
        (
            "Lesion classification (frozen encoder)",
            _score_table(["encoder", "ROC AUC"], [[m, v] for m, v in lesion_auc.items()])
            + "\nLesion-centred vs lesion-free patches of the 5 embedded lesion cases, logistic regression "
            "on pooled frozen features, leave-one-case-out.\n\n" + "\n".join(roc_images),
        )
    )

    # 7. cross-task ranks
    log("cross-task ranks")
    segmentation = {}
    for shots in sorted({r["shots"] for r in records}):
        means = {r["method"]: r["mean"] for r in records if r["shots"] == shots and math.isfinite(r["mean"])}
        if set(means) == set(encoders):
            segmentation[f"{shots}-shot Dice"] = means
    classification = {"lesion AUC": lesion_auc, f"organ precision@{k}": retrieval}
    if segmentation and len(encoders) >= 2:
        rank_plot = cross_task_rank_plot(segmentation, classification, out / "cross_task_ranks.png")
        seg_ranks, cls_ranks = mean_ranks(segmentation), mean_ranks(classification)
        body = _score_table(
            ["encoder", "mean rank, segmentation", "mean rank, classification"],
            [[m, seg_ranks[m], cls_ranks[m]] for m in encoders],
        )
        body += (
            f"\nSegmentation: {', '.join(segmentation)}; classification: {', '.join(classification)}; "
            "rank 1 = best.\n\n" + _image("cross-task ranks", rank_plot, out)
        )
    else:
        body = "Needs at least two encoders with results at every shot count."
    sections.append(("Cross-task ranking", body))

    log("encoder analyses done")
    return sections
