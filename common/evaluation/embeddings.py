"""Analyses of pre-trained encoder embeddings: PCA, exact t-SNE, patch-PCA RGB maps, zero-shot retrieval.

The analyses the papers of this collection run on frozen encoders:

* Coda: zero-shot t-SNE of organ embeddings (``tsne`` + ``plot_embedding``), exact t-SNE of
  van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008).
* DINOv2 on radiology (Baharoon et al. 2023, following the patch-PCA visualisation of Oquab et al.,
  "DINOv2: Learning Robust Visual Features without Supervision", 2023): PCA of one image's patch
  features, the first component thresholded to remove the background, the first three components
  shown as RGB (``patch_pca_rgb`` + ``save_patch_pca``).
* LeADER: zero-shot retrieval, cosine similarity of a query (patch) embedding to the embedding of
  every gallery image, precision of the top K (``retrieval_precision_at_k``,
  ``retrieval_precision_batch``).

Inputs may be numpy arrays or torch tensors (rows are samples); all computation is on the CPU in
float64 and results are numpy arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .figures import new_figure, save_figure


def _as_matrix(features, name: str = "features") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features.detach().cpu() if torch.is_tensor(features) else features))
    x = x.to(dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pca_fit(x: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred PCA of float64 ``x`` (n, d): (projected (n, k), components (k, d), explained ratio (k,))."""
    n, d = x.shape
    if not 1 <= n_components <= min(n, d):
        raise ValueError(f"n_components must be in [1, min(n, d)] = [1, {min(n, d)}], got {n_components}")
    xc = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    components = vh[:n_components]
    # sign convention: the loading of largest magnitude (first one on ties) of each component is positive
    pivot = components.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(components.gather(1, pivot))
    components = components * torch.where(signs == 0, 1.0, signs)
    variance = s.pow(2)
    total = variance.sum()
    ratio = variance[:n_components] / total if total > 0 else torch.zeros(n_components, dtype=x.dtype)
    return xc @ components.T, components, ratio


def pca(features, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal component analysis: ``(projected (n, k), explained_variance_ratio (k,))``.

    With ``Xc = X - mean(X)`` (column-centred, n x d) and the thin SVD ``Xc = U S V^T``, the components
    are the first k right singular vectors ``v_1..v_k`` (eigenvectors of the covariance
    ``Xc^T Xc / (n - 1)``), the projections ``Xc v_j = s_j u_j`` and the explained variance ratios
    ``s_j^2 / sum_i s_i^2``. Signs are fixed deterministically: within each component the loading of
    largest magnitude is positive. Computed in float64. ValueError unless ``1 <= k <= min(n, d)``.
    """
    projected, _, ratio = _pca_fit(_as_matrix(features), int(n_components))
    return projected.numpy(), ratio.numpy()


def _conditional_probabilities(
    distances, perplexity: float, tol: float = 1e-6, max_iter: int = 200
) -> np.ndarray:
    """Conditional affinities ``p_{j|i}`` (n, n) calibrated to ``perplexity`` (van der Maaten & Hinton 2008).

    ``distances`` are squared Euclidean distances ``d_ij = ||x_i - x_j||^2`` (diagonal ignored). For every
    row, ``p_{j|i} = exp(-beta_i d_ij) / sum_{k != i} exp(-beta_i d_ik)`` (``beta_i = 1 / (2 sigma_i^2)``,
    ``p_{i|i} = 0``), with ``beta_i`` found by a vectorised binary search (doubling/halving until the
    target is bracketed, then bisection) so that the Shannon entropy
    ``H(P_i) = log Z_i + beta_i sum_j p_{j|i} d_ij`` (nats) equals ``log(perplexity)``, i.e.
    ``Perp(P_i) = 2^{H_2(P_i)} = perplexity``, to ``tol`` nats. Reachable for ``1 <= perplexity < n - 1``.
    """
    d = torch.as_tensor(np.asarray(distances), dtype=torch.float64)
    n = d.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    # shift each row by its smallest off-diagonal distance (cancels in p, avoids underflow; Z_i >= 1)
    d = torch.where(off, d - torch.where(off, d, torch.inf).amin(dim=1, keepdim=True), 0.0)
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=torch.float64)
    lo, hi = torch.zeros_like(beta), torch.full_like(beta, torch.inf)
    for _ in range(max_iter):
        w = torch.exp(-beta * d) * off
        z = w.sum(dim=1, keepdim=True)
        p = w / z
        excess = torch.log(z) + beta * (p * d).sum(dim=1, keepdim=True) - target
        if excess.abs().max() < tol:
            break
        too_flat = excess > 0  # entropy too high: narrower Gaussian (larger beta)
        lo, hi = torch.where(too_flat, beta, lo), torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    return p.numpy()


def tsne(
    features,
    n_components: int = 2,
    perplexity: float = 30.0,
    n_iter: int = 1000,
    learning_rate: float | str = "auto",
    seed: int = 0,
    init: str = "pca",
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of ``features`` (n, d) -> (n, n_components).

    For small n (O(n^2) memory and time per iteration; n <= ~2000). Steps:

    1. ``p_{j|i}`` from squared distances, each row's Gaussian bandwidth calibrated by binary search to
       the target perplexity (``_conditional_probabilities``); symmetrised
       ``p_ij = (p_{j|i} + p_{i|j}) / 2n``.
    2. Low-dimensional Student-t affinities ``q_ij = (1 + ||y_i - y_j||^2)^-1 / sum_{k != l} (1 + ||y_k -
       y_l||^2)^-1``.
    3. Gradient descent on ``KL(P || Q)``, ``dC/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j)(1 + ||y_i -
       y_j||^2)^-1``, update ``u <- m u - eta g`` (``g`` scaled elementwise by the adaptive gains of
       Jacobs 1988, +0.2 / x0.8, floor 0.01, as in the reference implementation), ``y <- y + u``;
       momentum ``m`` = 0.5 for the first 250 iterations, then 0.8; early exaggeration (P x 12) for the
       first 250 iterations.
    4. Initialisation: the first PCA components scaled so that the first has standard deviation 1e-4
       (``init="pca"``, deterministic), or N(0, 1e-4^2) drawn from a generator seeded with ``seed``
       (``init="random"``). ``learning_rate="auto"`` is ``max(n / 12 / 4, 50)``.

    Deterministic for given inputs and seed (float64, CPU). ValueError unless
    ``1 <= perplexity <= (n - 1) / 3`` (each point needs about 3 x perplexity neighbours).
    """
    x = _as_matrix(features)
    n = x.shape[0]
    if not 1.0 <= perplexity <= (n - 1) / 3:
        raise ValueError(
            f"perplexity must satisfy 1 <= perplexity <= (n - 1) / 3 = {(n - 1) / 3:.3g} for n = {n} "
            f"samples, got {perplexity}; lower the perplexity or embed more samples"
        )
    if init not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random', got {init!r}")
    exaggeration, exaggeration_iters = 12.0, 250
    eta = max(n / exaggeration / 4, 50.0) if learning_rate == "auto" else float(learning_rate)
    p = torch.as_tensor(_conditional_probabilities(torch.cdist(x, x).pow(2), perplexity))
    p = ((p + p.T) / (2 * n)).clamp_min(1e-12).fill_diagonal_(0.0)
    if init == "pca":
        y = _pca_fit(x, n_components)[0]
        std = y[:, 0].std()
        y = y / (std if std > 0 else 1.0) * 1e-4
    else:
        gen = torch.Generator().manual_seed(int(seed))
        y = torch.randn(n, n_components, generator=gen, dtype=torch.float64) * 1e-4
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for it in range(int(n_iter)):
        early = it < exaggeration_iters
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        w = ((exaggeration if early else 1.0) * p - q) * num
        grad = 4.0 * (w.sum(dim=1, keepdim=True) * y - w @ y)
        gains = torch.where(update * grad < 0, gains + 0.2, gains * 0.8).clamp_min(0.01)
        update = (0.5 if early else 0.8) * update - eta * gains * grad
        y = y + update
    return y.numpy()


def plot_embedding(
    points,
    labels,
    path: str | os.PathLike,
    title: str = "",
    label_names: Mapping | Sequence[str] | None = None,
) -> Path:
    """Scatter plot (PNG) of 2-D ``points`` (n, 2) coloured by ``labels`` (n,), with a legend.

    Categorical colours (tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo beyond), classes in
    sorted order. ``label_names`` maps a label to its legend text (a mapping, or a sequence indexed by
    integer labels). Drawn with ``Figure`` + ``FigureCanvasAgg`` (no pyplot state) and written
    atomically (temporary file, then ``os.replace``).
    """
    from matplotlib import colormaps

    pts = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points, dtype=np.float64)
    lab = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {pts.shape}")
    if lab.shape != (pts.shape[0],):
        raise ValueError(f"labels must have shape ({pts.shape[0]},), got {lab.shape}")
    classes = np.unique(lab)
    m = len(classes)
    if m <= 10:
        colours = [colormaps["tab10"](i) for i in range(m)]
    elif m <= 20:
        colours = [colormaps["tab20"](i) for i in range(m)]
    else:
        colours = [colormaps["turbo"](v) for v in np.linspace(0.0, 1.0, m)]
    fig = new_figure((6.4 if m <= 10 else 8.0, 5.2))
    ax = fig.add_subplot()
    for c, colour in zip(classes, colours, strict=True):
        sel = lab == c
        key = c.item() if hasattr(c, "item") else c
        name = label_names[key] if label_names is not None else key
        ax.scatter(pts[sel, 0], pts[sel, 1], s=10, color=colour, label=str(name), alpha=0.85, linewidths=0)
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=1 + m // 25)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    return save_figure(fig, path)


def patch_pca_rgb(
    patch_features,
    grid_shape: tuple[int, int],
    threshold: float = 0.0,
    background_below: bool = True,
    refit_foreground: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch-feature PCA as an RGB map with background removal: ``(rgb (H, W, 3) in [0, 1], mask (H, W))``.

    ``patch_features`` (N, C) are one 2-D image's patch features in row-major grid order (patch
    ``(h, w)`` is row ``h * W + w``, e.g. ``feats[0].flatten(1).T`` for a (C, H, W) map); ``grid_shape`` =
    (H, W) with ``H * W = N`` (for a 3-D volume pass one slice's patches). Following the DINOv2 patch
    visualisation (Oquab et al. 2023; Baharoon et al. 2023 on radiology): PCA to three components
    (``pca`` sign convention); the first component ``c_1`` is thresholded, background = ``c_1 <
    threshold`` (``background_below=True``) or ``c_1 > threshold`` (False), foreground = the rest;
    with ``refit_foreground=True`` the three components are recomputed by a second PCA of the foreground
    patches only (as in the DINOv2 paper). Each component is min-max scaled over the foreground
    patches, ``(c - min_fg c) / (max_fg c - min_fg c)`` (0.5 where constant), and background patches are
    set to 0. With no foreground patch the map is all zero.
    """
    x = _as_matrix(patch_features, "patch_features")
    h, w = (int(v) for v in grid_shape)
    if h * w != x.shape[0]:
        raise ValueError(
            f"grid_shape {tuple(grid_shape)} holds {h * w} patches, got {x.shape[0]} feature rows"
        )
    projected = _pca_fit(x, 3)[0]
    first = projected[:, 0]
    foreground = first >= threshold if background_below else first <= threshold
    if refit_foreground and int(foreground.sum()) >= 3:
        projected = torch.zeros_like(projected)
        projected[foreground] = _pca_fit(x[foreground], 3)[0]
    rgb = torch.zeros_like(projected)
    if foreground.any():
        fg = projected[foreground]
        lo, hi = fg.amin(dim=0), fg.amax(dim=0)
        span = hi - lo
        scaled = torch.where(span > 0, (fg - lo) / torch.where(span > 0, span, 1.0), 0.5)
        rgb[foreground] = scaled.clamp(0.0, 1.0)
    return rgb.reshape(h, w, 3).numpy(), foreground.reshape(h, w).numpy()


def save_patch_pca(image2d, rgb, path: str | os.PathLike, title: str = "") -> Path:
    """Side-by-side PNG: the image (grey, 1st-99th percentile window) and the patch-PCA RGB map.

    ``image2d`` (h, w) and ``rgb`` (H, W, 3) in [0, 1] (from ``patch_pca_rgb``) are shown as stored
    (row = vertical axis); the RGB map is upsampled by nearest neighbour to (h, w): pixel ``(i, j)`` takes
    patch ``(floor(i H / h), floor(j W / w))``. Written atomically (Figure + FigureCanvasAgg).
    """
    img = np.asarray(image2d.detach().cpu() if torch.is_tensor(image2d) else image2d, dtype=np.float64)
    colour = np.asarray(rgb.detach().cpu() if torch.is_tensor(rgb) else rgb, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image2d must be 2-D, got shape {img.shape}")
    if colour.ndim != 3 or colour.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {colour.shape}")
    (ih, iw), (gh, gw) = img.shape, colour.shape[:2]
    rows, cols = (np.arange(ih) * gh) // ih, (np.arange(iw) * gw) // iw
    upsampled = np.clip(colour[rows][:, cols], 0.0, 1.0)
    lo, hi = np.percentile(img, [1, 99])
    fig = new_figure((8.0, 4.2))
    ax_img, ax_rgb = fig.subplots(1, 2)
    ax_img.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax_img.set(title="image", xticks=[], yticks=[])
    ax_rgb.imshow(upsampled, interpolation="nearest")
    ax_rgb.set(title="patch PCA (RGB = PC1-3)", xticks=[], yticks=[])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _top_k_labels(
    queries, gallery, gallery_labels, k: int, exclude_self: bool, query_indices
) -> tuple[np.ndarray, np.ndarray]:
    q, g = _as_matrix(queries, "queries"), _as_matrix(gallery, "gallery")
    labels = np.asarray(gallery_labels.detach().cpu() if torch.is_tensor(gallery_labels) else gallery_labels)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != gallery dimension {g.shape[1]}")
    if labels.shape != (g.shape[0],):
        raise ValueError(f"gallery_labels must have shape ({g.shape[0]},), got {labels.shape}")
    available = g.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(
            f"k must be in [1, {available}] (gallery size{' - 1' if exclude_self else ''}), got {k}"
        )
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    if exclude_self:
        if query_indices is None:
            raise ValueError("exclude_self=True needs query_indices (each query's row in the gallery)")
        idx = torch.as_tensor(np.asarray(query_indices), dtype=torch.long).reshape(-1)
        if idx.shape[0] != q.shape[0]:
            raise ValueError(f"query_indices has {idx.shape[0]} entries for {q.shape[0]} queries")
        if idx.numel() and (idx.min() < 0 or idx.max() >= g.shape[0]):
            raise ValueError("query_indices out of the gallery's range")
        sim[torch.arange(q.shape[0]), idx] = -torch.inf
    # descending similarity, ties broken by the lower gallery index (stable sort)
    order = torch.sort(-sim, dim=1, stable=True).indices[:, :k]
    return labels[order.numpy()], order.numpy()


def retrieval_precision_batch(
    queries,
    query_labels,
    gallery,
    gallery_labels,
    k: int,
    exclude_self: bool = False,
    query_indices=None,
) -> tuple[float, np.ndarray]:
    """Zero-shot retrieval precision@k (LeADER): ``(mean over queries, per-query precisions (m,))``.

    Queries (m, d) and gallery (g, d) are l2-normalised (``e / max(||e||, 1e-12)``) and ranked by cosine
    similarity ``s_qj = <q / ||q||, e_j / ||e_j||>``; the top k gallery items (descending similarity,
    exact ties broken by the lower index, deterministic) give ``precision@k(q) = |{j in topk(q) : label_j
    = label_q}| / k``. With ``exclude_self=True`` (queries taken from the gallery) ``query_indices`` (m,)
    gives each query's own gallery row, which is excluded from its ranking. ValueError unless
    ``1 <= k <= g`` (``g - 1`` with ``exclude_self``).
    """
    qlab = np.asarray(query_labels.detach().cpu() if torch.is_tensor(query_labels) else query_labels)
    top, _ = _top_k_labels(queries, gallery, gallery_labels, int(k), exclude_self, query_indices)
    if qlab.shape != (top.shape[0],):
        raise ValueError(f"query_labels must have shape ({top.shape[0]},), got {qlab.shape}")
    per_query = (top == qlab[:, None]).mean(axis=1).astype(np.float64)
    return (float(per_query.mean()) if per_query.size else float("nan")), per_query


def retrieval_precision_at_k(
    query,
    gallery,
    gallery_labels,
    query_label,
    k: int,
    exclude_self: bool = False,
    query_index: int | None = None,
) -> float:
    """Precision@k of one query embedding (d,) against a gallery (g, d); see ``retrieval_precision_batch``.

    ``precision@k = |{j in topk(cos(query, e_j)) : label_j = query_label}| / k``; with ``exclude_self``,
    ``query_index`` is the query's own gallery row, left out of the ranking.
    """
    q = query.detach().cpu() if torch.is_tensor(query) else np.asarray(query)
    q = np.asarray(q, dtype=np.float64).reshape(1, -1)
    indices = None if query_index is None else [int(query_index)]
    mean, _ = retrieval_precision_batch(q, [query_label], gallery, gallery_labels, k, exclude_self, indices)
    return mean
