"""A Markdown report of a fine-tuning benchmark: results table, CKA, organ embeddings, patch PCA.

Every function takes explicit inputs (result rows as dicts, file paths, networks, tensors), so that a
command-line wrapper only has to read the results CSV / MLflow store and pass them on:

* :func:`results_table` - mean ± sd over seeds, percentile-bootstrap CI, difference to a baseline at
  the same number of shots and a paired two-sided Wilcoxon signed-rank test over seeds
  (:mod:`common.evaluation.stats`);
* :func:`cka_figure` - layer-wise linear CKA between a pre-trained Swin encoder and the encoder of the
  SwinUNETR fine-tuned from it (:mod:`common.evaluation.cka`);
* :func:`organ_embedding_figures` - t-SNE / PCA of pooled encoder embeddings of patches centred in organs
  of labelled CTs, and zero-shot retrieval precision@K (:mod:`common.evaluation.embeddings`);
* :func:`patch_pca_figure` - patch-feature PCA of one axial slab as an RGB map;
* :func:`write_report` - the Markdown file, with figure links relative to its folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .stats import (
    bootstrap_ci,
    mean_sd,
    paired_differences,
    significance_marker,
    t_test_independent,
    wilcoxon_signed_rank,
)

# MONAI SwinTransformer modules whose outputs are the encoder's five representations; layersN is a
# ModuleList of one BasicLayer (the list itself is never called, so hooks go on its element 0).
SWIN_LAYERS = ("patch_embed", "layers1.0", "layers2.0", "layers3.0", "layers4.0")
SWIN_LAYER_LABELS = ("patch_embed", "layers1", "layers2", "layers3", "layers4")


# ------------------------------------------------------------------ results table


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() in ("nan", "none", "null"):
            return True
        return False
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _shots_key(shots) -> tuple:
    try:
        return (0, float(shots), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(shots))


def _normal(value):
    """CSV strings '1' / '1.0' -> 1 (int-valued numbers as int), other values unchanged."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value.strip()
        return int(number) if number.is_integer() else number
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def results_rows(
    rows: Sequence[Mapping],
    metric: str = "mean_dice",
    baseline: str = "scratch",
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> list[dict]:
    """The numbers of :func:`results_table`: one dict per (method, shots).

    ``rows`` are result records with ``method``, ``shots``, ``seed`` and ``metric`` (CSV strings are
    accepted). Rows whose metric is empty or NaN count as ``failed`` and are left out of the statistics.
    Each output dict: ``method``, ``shots``, ``n``, ``failed``, ``seeds``, ``values`` (in seed order),
    ``mean``, ``sd`` (ddof=1, NaN for n = 1), ``ci_low``/``ci_high`` (percentile bootstrap of the mean),
    ``delta`` (mean minus the baseline's mean at the same shots; NaN without a baseline there),
    ``n_pairs`` (seeds shared with the baseline), ``statistic``/``p`` (two-sided Wilcoxon signed-rank
    over those seeds, NaN when n_pairs < 2 or fewer than 2 differences are non-zero) and ``marker``
    (:func:`~common.evaluation.stats.significance_marker`; None for the baseline), and ``t``/``p_t``/
    ``marker_t`` (two-sided Student two-sample t-test against the baseline's values, as SuPreM reports;
    NaN unless both have at least 2 values). With 3 seeds the exact Wilcoxon p is at least 0.25, so only
    the t-test can reach 0.05 there. Order: shots
    ascending (numbers first), within a shots value the baseline first, then methods alphabetically.
    ValueError for a repeated (method, shots, seed).
    """
    groups: dict[tuple, dict] = {}
    failed: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        for field in ("method", "shots", "seed"):
            if field not in row:
                raise KeyError(f"result row {i} has no {field!r} field: {dict(row)}")
        key = (str(row["method"]), _normal(row["shots"]))
        groups.setdefault(key, {})
        failed.setdefault(key, 0)
        value = row.get(metric)
        if _is_missing(value):
            failed[key] += 1
            continue
        run_seed = _normal(row["seed"])
        if run_seed in groups[key]:
            raise ValueError(f"method {key[0]!r}, shots {key[1]!r}: seed {run_seed!r} appears twice")
        groups[key][run_seed] = float(value)

    out = []
    for key in sorted(groups, key=lambda k: (_shots_key(k[1]), k[0] != baseline, k[0])):
        method, shots = key
        by_seed = groups[key]
        seeds = sorted(by_seed, key=_shots_key)
        values = np.array([by_seed[s] for s in seeds], dtype=np.float64)
        record = {"method": method, "shots": shots, "n": int(values.size), "failed": failed[key]}
        record.update(seeds=seeds, values=values.tolist())
        if values.size:
            record["mean"], record["sd"] = mean_sd(values)
            record["ci_low"], record["ci_high"] = bootstrap_ci(values, np.mean, confidence, n_resamples, seed)
        else:
            record.update(mean=math.nan, sd=math.nan, ci_low=math.nan, ci_high=math.nan)
        record.update(delta=math.nan, n_pairs=0, statistic=math.nan, p=math.nan, marker="n/a")
        record.update(t=math.nan, p_t=math.nan, marker_t="n/a")
        base = groups.get((baseline, shots))
        if method == baseline:
            record.update(delta=0.0 if values.size else math.nan, marker=None, marker_t=None)
        elif base and values.size:
            record["delta"] = record["mean"] - float(np.mean(list(base.values())))
            if values.size >= 2 and len(base) >= 2:
                record["t"], record["p_t"] = t_test_independent(values, list(base.values()))
                record["marker_t"] = significance_marker(record["p_t"])
            shared = [s for s in seeds if s in base]
            a = np.array([by_seed[s] for s in shared], dtype=np.float64)
            b = np.array([base[s] for s in shared], dtype=np.float64)
            record["n_pairs"] = len(shared)
            if len(shared) >= 2 and np.count_nonzero(paired_differences(a, b)) >= 2:
                record["statistic"], record["p"] = wilcoxon_signed_rank(a, b)
                record["marker"] = significance_marker(record["p"])
        out.append(record)
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _fmt_p(p: float, marker: str) -> str:
    return "n/a" if p is None or math.isnan(p) else f"{p:.3g} {marker}"


def results_table(
    rows: Sequence[Mapping],
    metric: str = "mean_dice",
    baseline: str = "scratch",
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> str:
    """Markdown table of ``metric`` per (method, shots), from :func:`results_rows`.

    Columns: method, shots, n seeds (``+k failed`` when some runs have no value), mean ± sd, the
    percentile-bootstrap CI of the mean, Δ = mean - baseline mean at the same shots, the paired Wilcoxon
    p over shared seeds ("n/a" when fewer than 2 seeds are shared or fewer than 2 differences are
    non-zero) and the two-sample t-test p, each followed by its significance marker. The baseline's Δ
    and p are "—".
    """
    records = results_rows(rows, metric, baseline, confidence, n_resamples, seed)
    level = f"{confidence * 100:g} %"
    lines = [
        f"| method | shots | n | {metric} mean ± sd | {level} CI | Δ vs {baseline} "
        "| p (paired Wilcoxon) | p (t-test) |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in records:
        n = str(r["n"]) + (f" (+{r['failed']} failed)" if r["failed"] else "")
        mean_sd_text = f"{_fmt(r['mean'])} ± {_fmt(r['sd'])}"
        ci = "n/a" if math.isnan(r["ci_low"]) else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        if r["method"] == baseline:
            delta = p = p_t = "—"
        else:
            delta = "n/a" if math.isnan(r["delta"]) else f"{r['delta']:+.3f}"
            p, p_t = _fmt_p(r["p"], r["marker"]), _fmt_p(r["p_t"], r["marker_t"])
        lines.append(
            f"| {r['method']} | {r['shots']} | {n} | {mean_sd_text} | {ci} | {delta} | {p} | {p_t} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CKA


def _load_segmenter_checkpoint(net: nn.Module, path: str | os.PathLike) -> None:
    from common.networks import EncoderLoadError, read_encoder_file, state_dict_problems

    state, _ = read_encoder_file(path)
    own = net.state_dict()
    if not set(state) & set(own):  # e.g. saved from a DistributedDataParallel / compiled wrapper
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
    problems = state_dict_problems(own, state)
    if problems:
        raise EncoderLoadError(
            "\n".join([f"{path}: checkpoint does not fit {type(net).__name__}", *problems])
        )
    net.load_state_dict(state)


def cka_figure(
    pretrained_encoder_file: str | os.PathLike,
    finetuned_checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    inputs: torch.Tensor,
    feature_size: int = 12,
    out_channels: int = 27,
    pool: bool = False,
    title: str = "",
) -> dict[str, float]:
    """Layer-wise linear CKA between a pre-trained Swin encoder and the encoder of its fine-tuned SwinUNETR.

    The pre-trained side is a :class:`~common.networks.SwinEncoder` loaded from ``pretrained_encoder_file``
    (:func:`~common.networks.load_encoder`); the fine-tuned side is ``build_segmenter("swinunetr",
    out_channels, feature_size)`` loaded strictly from ``finetuned_checkpoint`` (a bare state dict or
    one under "model"/"network"/"state_dict", read with :func:`~common.networks.read_encoder_file`).
    Both run on the same ``inputs`` (B, 1, *roi), roi multiples of 32, B >= 2, e.g. real CT crops; the
    features are the outputs of MONAI SwinTransformer's ``patch_embed`` and its four stages
    (``layersN.0``; on the SwinUNETR side ``swinViT.patch_embed``, ``swinViT.layersN.0``, collected by
    running its ``swinViT`` alone, which is what SwinUNETR's forward does first).

    Features are flattened per input (``pool=False``, the default) rather than globally average-pooled:
    a segmentation encoder's information is in the spatial layout of its maps, which pooling discards,
    and with the handful of crops one can afford, pooled channel means mostly reflect each crop's mean
    intensity. Flattening costs nothing extra here (``linear_cka`` works on the n x n Gram matrices).
    Writes the bar chart at ``path`` (:func:`~common.evaluation.cka.plot_cka`) and returns
    ``{layer label: CKA}`` with labels ``patch_embed``, ``layers1`` .. ``layers4``.
    """
    from common.networks import SwinEncoder, build_segmenter, load_encoder

    from .cka import collect_features, layerwise_cka, plot_cka

    inputs = torch.as_tensor(inputs, dtype=torch.float32)
    if inputs.ndim != 5 or inputs.shape[0] < 2:
        raise ValueError(f"inputs must be (B >= 2, C, D, H, W) crops, got shape {tuple(inputs.shape)}")
    pretrained = SwinEncoder(in_channels=inputs.shape[1], feature_size=feature_size)
    load_encoder(pretrained, pretrained_encoder_file)
    finetuned = build_segmenter(
        "swinunetr", in_channels=inputs.shape[1], out_channels=out_channels, feature_size=feature_size
    )
    _load_segmenter_checkpoint(finetuned, finetuned_checkpoint)
    feats_a = collect_features(pretrained, inputs, SWIN_LAYERS)
    feats_b = collect_features(finetuned.swinViT, inputs, SWIN_LAYERS)
    raw = layerwise_cka(feats_a, feats_b, pool=pool)
    values = {label: raw[name] for label, name in zip(SWIN_LAYER_LABELS, SWIN_LAYERS, strict=True)}
    plot_cka(values, path, title=title or "pre-trained vs fine-tuned encoder (linear CKA)")
    return values


# ------------------------------------------------------------------ CT loading and crops


def load_labelled_ct(item: Mapping, pixdim: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (1, X, Y, Z) in [0, 1], label (1, X, Y, Z) int64)`` of a datalist item with absolute
    ``image``/``label`` paths, through ``segmentation_transforms("val", pixdim)`` (RAS, CT window,
    cropped to the body)."""
    from common.transforms import segmentation_transforms

    data = segmentation_transforms("val", pixdim=[float(pixdim)] * 3)(
        {"image": str(item["image"]), "label": str(item["label"])}
    )
    image = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)
    label = torch.as_tensor(np.asarray(data["label"])).round().long()
    return image, label


def crop_at(volume: torch.Tensor, centre: Sequence[int], roi: int) -> torch.Tensor:
    """The ``roi``-cube of ``volume`` (C, *spatial) centred at ``centre`` (voxel ``c - roi // 2`` to
    ``c + roi - roi // 2 - 1`` per axis), zero-padded where it leaves the volume."""
    spatial = volume.shape[1:]
    out = volume.new_zeros((volume.shape[0], *(roi,) * len(spatial)))
    src, dst = [slice(None)], [slice(None)]
    for c, size in zip(centre, spatial, strict=True):
        start = int(c) - roi // 2
        lo, hi = max(start, 0), min(start + roi, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _embed(encoder: nn.Module, patches: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Pooled embeddings (n, d): ``encoder(x)`` averaged over any spatial dims (a SwinEncoder's forward
    already gives the mean of its last stage map). Eval mode and no_grad; the training flag is restored."""
    training = encoder.training
    encoder.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, patches.shape[0], batch):
                out = encoder(patches[start : start + batch])
                if isinstance(out, (list, tuple)):
                    out = out[-1]
                if out.ndim > 2:
                    out = out.flatten(2).mean(-1)
                outs.append(out.detach().cpu().double())
    finally:
        encoder.train(training)
    return torch.cat(outs)


# ------------------------------------------------------------------ organ embeddings


def organ_embedding_figures(
    encoder: nn.Module,
    items: Sequence[Mapping],
    class_names: Sequence[str] | Mapping,
    out_dir: str | os.PathLike,
    pixdim: float = 4.0,
    roi: int = 32,
    per_class: int = 6,
    seed: int = 0,
    max_classes: int = 8,
    min_voxels: int = 500,
    k: int = 5,
    cases: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """t-SNE and PCA of organ-patch embeddings (``tsne.png``, ``pca.png``) and retrieval precision@k.

    Each item (image and label, absolute paths) is loaded at ``pixdim`` mm (:func:`load_labelled_ct`),
    unless ``cases`` gives those ``(image, label)`` pairs already (to compare several encoders).
    The organs are the classes (background 0 excluded) with at least ``min_voxels`` voxels over all
    items, the ``max_classes`` largest of them. For each organ ``per_class`` voxels are drawn without
    replacement (``numpy.random.default_rng(seed)``) from all its voxels in all items; the ``roi``-cube
    centred at each is the patch (:func:`crop_at`), labelled by that organ. Embeddings are the pooled
    encoder outputs (:func:`_embed`; for a SwinEncoder the mean of its last stage map). t-SNE uses
    perplexity ``min(30, (n - 1) / 3)``; retrieval uses every patch as a query against all others
    (itself excluded), cosine similarity, precision of the top ``min(k, n - 1)``. Patches of one organ
    in the same subject may overlap, which favours retrieval; ``subjects`` tells where each came from.

    Returns ``tsne``/``pca`` (paths), ``precision_at_k`` (mean), ``per_query`` (n,), ``k``, ``n``,
    ``classes`` (chosen class names), ``labels`` (class index per patch), ``subjects`` (item index per
    patch), ``centres`` and ``embeddings`` (n, d).
    """
    from .embeddings import pca, plot_embedding, retrieval_precision_batch, tsne

    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    names = {int(key): str(value) for key, value in names.items()}
    if not items:
        raise ValueError("no labelled items given")
    if cases is None:
        cases = [load_labelled_ct(item, pixdim) for item in items]
    elif len(cases) != len(items):
        raise ValueError(f"{len(items)} items but {len(cases)} loaded cases")
    counts: dict[int, int] = {}
    for _, label in cases:
        values, freq = torch.unique(label, return_counts=True)
        for v, f in zip(values.tolist(), freq.tolist(), strict=True):
            counts[v] = counts.get(v, 0) + f
    eligible = sorted(
        (c for c, n in counts.items() if c != 0 and n >= max(min_voxels, per_class)),
        key=lambda c: (-counts[c], c),
    )[:max_classes]
    if len(eligible) < 2:
        raise ValueError(
            f"fewer than 2 classes with >= {min_voxels} voxels at {pixdim} mm: "
            f"{ {names.get(c, c): n for c, n in sorted(counts.items())} }"
        )
    rng = np.random.default_rng(seed)
    patches, labels, subjects, centres = [], [], [], []
    for c in eligible:
        where = [(i, torch.nonzero(label[0] == c)) for i, (_, label) in enumerate(cases)]
        owners = np.concatenate([np.full(len(idx), i) for i, idx in where])
        coords = torch.cat([idx for _, idx in where]).numpy()
        for j in rng.choice(len(coords), size=per_class, replace=False):
            i, centre = int(owners[j]), coords[j].tolist()
            patches.append(crop_at(cases[i][0], centre, roi))
            labels.append(c)
            subjects.append(i)
            centres.append(centre)
    embeddings = _embed(encoder, torch.stack(patches)).numpy()
    labels_arr = np.asarray(labels)
    n = len(labels)
    out_dir = Path(out_dir)
    legend = {c: names.get(c, str(c)) for c in eligible}
    perplexity = min(30.0, (n - 1) / 3)
    if perplexity < 1:
        raise ValueError(f"t-SNE needs at least 4 patches, got {n}")
    points = tsne(embeddings, perplexity=perplexity, seed=seed)
    tsne_path = plot_embedding(points, labels_arr, out_dir / "tsne.png", "t-SNE of organ patches", legend)
    projected, ratio = pca(embeddings, 2)
    pca_title = f"PCA of organ patches (PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%})"
    pca_path = plot_embedding(projected, labels_arr, out_dir / "pca.png", pca_title, legend)
    k = min(int(k), n - 1)
    mean, per_query = retrieval_precision_batch(
        embeddings, labels_arr, embeddings, labels_arr, k, exclude_self=True, query_indices=np.arange(n)
    )
    return {
        "tsne": tsne_path,
        "pca": pca_path,
        "precision_at_k": mean,
        "per_query": per_query,
        "k": k,
        "n": n,
        "classes": [legend[c] for c in eligible],
        "labels": labels_arr,
        "subjects": np.asarray(subjects),
        "centres": np.asarray(centres),
        "embeddings": embeddings,
    }


# ------------------------------------------------------------------ patch PCA


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial dims of (C, *spatial) at their ends to multiples of ``multiple``."""
    pads = []
    for size in reversed(x.shape[1:]):
        pads += [0, (-size) % multiple]
    return torch.nn.functional.pad(x, pads)


def _display(a: np.ndarray) -> np.ndarray:
    """An (X, Y, ...) RAS slice shown radiologically: rows anterior (top) to posterior, columns patient
    right (left of the image) to left."""
    return np.flip(np.swapaxes(a, 0, 1), axis=(0, 1))


def patch_pca_figure(
    encoder: nn.Module,
    image_volume,
    path: str | os.PathLike,
    axis_slice: int | None = None,
    stage: int = 1,
    slab: int = 32,
    title: str = "",
) -> Path:
    """Patch-feature PCA (RGB = PC1-3, background removed) of one axial slab of a CT volume.

    ``image_volume`` (1, X, Y, Z) or (X, Y, Z) is a RAS volume in [0, 1] (e.g. from
    :func:`load_labelled_ct`); ``axis_slice`` the axial index (default the middle). The slab of ``slab``
    slices centred there (zero-padded, x and y padded to multiples of 32) goes through
    ``encoder.features``; stage map ``stage`` (0: stride 2, 1: stride 4, ...) at the slab centre gives
    the (C, X', Y') patch features. :func:`~common.evaluation.embeddings.patch_pca_rgb` thresholds the
    first component at 0; the side of the threshold kept as foreground is the one whose patches have the
    higher mean intensity (air is 0 in the CT window), since the sign of a component is arbitrary.
    Written with :func:`~common.evaluation.embeddings.save_patch_pca`.
    """
    from common.networks.swin import TOTAL_STRIDE

    from .embeddings import patch_pca_rgb, save_patch_pca

    volume = torch.as_tensor(np.asarray(image_volume), dtype=torch.float32)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4:
        raise ValueError(f"image_volume must be (1, X, Y, Z) or (X, Y, Z), got {tuple(volume.shape)}")
    depth = volume.shape[-1]
    z = depth // 2 if axis_slice is None else int(axis_slice)
    if not 0 <= z < depth:
        raise ValueError(f"axis_slice {z} outside [0, {depth})")
    if slab % TOTAL_STRIDE:
        raise ValueError(f"slab must be a multiple of {TOTAL_STRIDE}, got {slab}")
    start = z - slab // 2
    lo, hi = max(start, 0), min(start + slab, depth)
    block = volume.new_zeros((*volume.shape[:3], slab))
    block[..., lo - start : hi - start] = volume[..., lo:hi]
    block = _pad_to_multiple(block, TOTAL_STRIDE)
    training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            fmap = encoder.features(block[None])[stage][0]
    finally:
        encoder.train(training)
    stride = block.shape[1] // fmap.shape[1]
    feats = fmap[..., (slab // 2) // stride]  # (C, X', Y') at the slab centre
    # drop the patches that only cover the padding (x, y padded to multiples of 32 above)
    gx, gy = (math.ceil(size / stride) for size in volume.shape[1:3])
    feats = feats[:, :gx, :gy]
    grid = (gx, gy)
    patch_features = feats.flatten(1).T
    image2d = block[0, : gx * stride, : gy * stride, slab // 2]
    intensity = torch.nn.functional.avg_pool2d(image2d[None, None], stride)[0, 0].flatten().numpy()
    rgb, mask = patch_pca_rgb(patch_features, grid, threshold=0.0, background_below=True)
    fg = mask.reshape(-1)
    if fg.any() and (~fg).any() and intensity[fg].mean() < intensity[~fg].mean():
        rgb, mask = patch_pca_rgb(patch_features, grid, threshold=0.0, background_below=False)
    text = title or f"patch PCA, stage {stage} (stride {stride}), axial slice {z}"
    return save_patch_pca(_display(image2d.numpy()), _display(rgb), path, text)


# ------------------------------------------------------------------ report


def figure_link(target: str | os.PathLike, folder: Path) -> str:
    """``target`` relative to ``folder`` with POSIX separators, in ``<...>`` when it has spaces or
    parentheses (as Markdown link targets need)."""
    rel = Path(os.path.relpath(Path(target).resolve(), folder.resolve())).as_posix()
    return f"<{rel}>" if any(ch in rel for ch in " ()") else rel


def write_report(
    path: str | os.PathLike,
    sections: Sequence[tuple[str, str]],
    figures: Mapping[str, str | os.PathLike],
    title: str = "Benchmark report",
) -> Path:
    """Write a Markdown report: ``# title``, one ``## heading`` + body per section, then a ``## Figures``
    section with one image link per figure (``![name](relative path)``, relative to the report's folder,
    POSIX separators). Written atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    if figures:
        parts.append("## Figures\n")
        for name, figure in figures.items():
            parts.append(f"### {name}\n\n![{name}]({figure_link(figure, path.parent)})\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
