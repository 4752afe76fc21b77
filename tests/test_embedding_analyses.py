"""Embedding analyses: PCA, exact t-SNE, patch-PCA RGB maps, zero-shot retrieval precision, figures."""

import numpy as np
import pytest
import torch

from common.evaluation.embeddings import (
    _conditional_probabilities,
    patch_pca_rgb,
    pca,
    plot_embedding,
    retrieval_precision_at_k,
    retrieval_precision_batch,
    save_patch_pca,
    tsne,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _single_thread():
    """Small matrices: one intra-op thread is faster, and robust on a loaded machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _two_clusters(n_per=30, dim=10, gap=8.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.0, 1.0, (n_per, dim)), rng.normal(gap, 1.0, (n_per, dim))])
    return x, np.repeat([0, 1], n_per)


@pytest.fixture(scope="module")
def ct_slice(prepared_data):
    import nibabel as nib

    volume = np.asarray(
        nib.load(prepared_data / "ct_multiorgan/totalseg_A_ct.nii.gz").dataobj, dtype=np.float32
    )
    return volume[:, :, volume.shape[2] // 2]


# ---------------------------------------------------------------- PCA


def test_pca_matches_covariance_eigendecomposition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    projected, ratio = pca(x, n_components=3)
    assert projected.shape == (80, 3) and ratio.shape == (3,)
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(xc, rowvar=False))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    np.testing.assert_allclose(ratio, evals[:3] / evals.sum(), rtol=1e-10)
    reference = xc @ evecs[:, :3]
    for j in range(3):  # equal up to the sign of each component
        sign = np.sign(reference[:, j] @ projected[:, j])
        np.testing.assert_allclose(projected[:, j], sign * reference[:, j], atol=1e-9)
    _, all_ratios = pca(x, n_components=6)
    assert np.all(np.diff(all_ratios) <= 1e-15) and all_ratios.sum() <= 1 + 1e-12
    assert ratio.sum() <= 1


def test_pca_signs_deterministic_and_input_types():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5))
    a, _ = pca(x, 2)
    b, _ = pca(torch.from_numpy(-x), 2)  # same components (sign fixed by the loadings, not the data)
    np.testing.assert_allclose(a, -b, atol=1e-12)  # projections of -x are the negatives of those of x
    np.testing.assert_array_equal(a, pca(x.copy(), 2)[0])
    # convention: projecting the centred data onto e_argmax has positive loading -> positive covariance
    xc = x - x.mean(0)
    for j in range(2):
        loadings = np.linalg.lstsq(xc, a[:, j], rcond=None)[0]
        assert loadings[np.argmax(np.abs(loadings))] > 0
    with pytest.raises(ValueError, match="n_components"):
        pca(x, 6)


# ---------------------------------------------------------------- t-SNE


def test_conditional_probabilities_reach_the_perplexity():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8)) * rng.uniform(0.1, 20.0, size=(50, 1))  # very different local scales
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    for perplexity in (2.0, 5.0, 15.0):
        p = _conditional_probabilities(d, perplexity)
        assert np.allclose(p.sum(1), 1.0) and np.all(np.diag(p) == 0)
        safe = np.where(p > 0, p, 1.0)
        entropy_bits = -(p * np.log2(safe)).sum(1)
        np.testing.assert_allclose(2.0**entropy_bits, perplexity, rtol=1e-3)


def test_tsne_separates_clusters_and_is_deterministic():
    x, labels = _two_clusters()
    y = tsne(x, perplexity=10.0, n_iter=500, seed=0)
    assert y.shape == (60, 2) and np.all(np.isfinite(y))
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.all(labels[d.argmin(1)] == labels)
    np.testing.assert_array_equal(y, tsne(x, perplexity=10.0, n_iter=500, seed=0))
    r1 = tsne(x, perplexity=10.0, n_iter=300, seed=4, init="random")
    np.testing.assert_array_equal(r1, tsne(x, perplexity=10.0, n_iter=300, seed=4, init="random"))


def test_tsne_perplexity_validation():
    x, _ = _two_clusters(n_per=10)
    with pytest.raises(ValueError, match=r"perplexity must satisfy .*\(n - 1\) / 3"):
        tsne(x, perplexity=7.0)  # (20 - 1) / 3 = 6.33
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x, perplexity=0.5)


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_worked():
    # query along +x; gallery cosines: a = 1 (label 0), b = cos 60 deg = 0.5 (label 1), c = 0 (label 0)
    query = np.array([2.0, 0.0])
    gallery = np.array([[0.0, 5.0], [1.0, np.sqrt(3.0)], [3.0, 0.0]])  # c, b, a (norms differ: cosine only)
    labels = np.array([0, 1, 0])
    assert retrieval_precision_at_k(query, gallery, labels, query_label=0, k=1) == 1.0  # a
    assert retrieval_precision_at_k(query, gallery, labels, query_label=0, k=2) == 0.5  # a, b
    assert retrieval_precision_at_k(query, gallery, labels, query_label=0, k=3) == pytest.approx(2 / 3)
    assert retrieval_precision_at_k(query, gallery, labels, query_label=1, k=2) == 0.5
    # the query is gallery row 2 (a): excluding it, the top 1 is b (label 1)
    assert retrieval_precision_at_k(query, gallery, labels, 0, k=1, exclude_self=True, query_index=2) == 0.0
    assert retrieval_precision_at_k(query, gallery, labels, 0, k=2, exclude_self=True, query_index=2) == 0.5
    # ties broken by index: two identical gallery items, the lower index comes first
    tied = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert retrieval_precision_at_k(query, tied, np.array([1, 0]), 1, k=1) == 1.0
    assert retrieval_precision_at_k(query, tied, np.array([0, 1]), 1, k=1) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        retrieval_precision_at_k(query, gallery, labels, 0, k=4)
    with pytest.raises(ValueError, match="k must be"):
        retrieval_precision_at_k(query, gallery, labels, 0, k=3, exclude_self=True, query_index=0)
    with pytest.raises(ValueError, match="query_indices"):
        retrieval_precision_batch(query[None], [0], gallery, labels, k=1, exclude_self=True)


def _brute_force(queries, query_labels, gallery, gallery_labels, k, exclude=None):
    precisions = []
    for i, q in enumerate(queries):
        sims = []
        for j, g in enumerate(gallery):
            if exclude is not None and exclude[i] == j:
                continue
            sims.append((-float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g))), j))
        top = [j for _, j in sorted(sims)[:k]]
        precisions.append(sum(gallery_labels[j] == query_labels[i] for j in top) / k)
    return np.array(precisions)


def test_retrieval_batch_matches_brute_force():
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(40, 16))
    gallery_labels = rng.integers(0, 4, size=40)
    queries = rng.normal(size=(25, 16))
    query_labels = rng.integers(0, 4, size=25)
    for k in (1, 3, 10, 40):
        mean, per = retrieval_precision_batch(queries, query_labels, gallery, gallery_labels, k)
        ref = _brute_force(queries, query_labels, gallery, gallery_labels, k)
        np.testing.assert_allclose(per, ref)
        assert mean == pytest.approx(ref.mean())
    # queries drawn from the gallery, their own rows excluded
    idx = rng.permutation(40)[:15]
    mean, per = retrieval_precision_batch(
        torch.from_numpy(gallery[idx]), gallery_labels[idx], gallery, gallery_labels, 5, True, idx
    )
    ref = _brute_force(gallery[idx], gallery_labels[idx], gallery, gallery_labels, 5, exclude=idx)
    np.testing.assert_allclose(per, ref)
    # string labels work too
    names = np.array(["liver", "spleen", "kidney", "aorta"])
    _, per_str = retrieval_precision_batch(queries, names[query_labels], gallery, names[gallery_labels], 3)
    np.testing.assert_allclose(per_str, _brute_force(queries, query_labels, gallery, gallery_labels, 3))


# ---------------------------------------------------------------- patch PCA RGB


def test_patch_pca_rgb_separates_foreground():
    rng = np.random.default_rng(6)
    h, w, c = 8, 10, 12
    half = np.zeros((h, w), dtype=bool)
    half[:, : w // 2] = True  # left half "foreground"
    direction = rng.normal(size=c)
    direction /= np.linalg.norm(direction)
    feats = rng.normal(scale=0.3, size=(h * w, c))
    feats[~half.reshape(-1)] += 6.0 * direction  # background shifted along one direction
    rgb, mask = patch_pca_rgb(feats, (h, w))
    assert rgb.shape == (h, w, 3) and mask.shape == (h, w) and mask.dtype == bool
    assert np.array_equal(mask, half) or np.array_equal(mask, ~half)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.all(rgb[~mask] == 0.0)
    fg = rgb[mask]
    np.testing.assert_allclose(fg.min(0), 0.0, atol=1e-12)  # min-max scaled over the foreground
    np.testing.assert_allclose(fg.max(0), 1.0, atol=1e-12)
    # the other side of the threshold selects the complementary half
    _, flipped = patch_pca_rgb(feats, (h, w), background_below=False)
    assert np.array_equal(flipped, ~mask)
    rgb2, mask2 = patch_pca_rgb(torch.from_numpy(feats), (h, w), refit_foreground=True)
    assert np.array_equal(mask2, mask) and np.all(rgb2[~mask2] == 0) and rgb2.max() <= 1.0
    with pytest.raises(ValueError, match="grid_shape"):
        patch_pca_rgb(feats, (9, 9))


def test_save_patch_pca_on_real_ct(ct_slice, tmp_path):
    # patch features from the real CT slice: 4x4-pixel patches, statistics of the intensities per patch
    img = ct_slice[: ct_slice.shape[0] // 4 * 4, : ct_slice.shape[1] // 4 * 4]
    hu = np.clip(img, -1000, 1000) / 1000.0
    gh, gw = hu.shape[0] // 4, hu.shape[1] // 4
    patches = hu.reshape(gh, 4, gw, 4).transpose(0, 2, 1, 3).reshape(gh * gw, 16)
    rgb, mask = patch_pca_rgb(patches, (gh, gw))
    assert 0 < mask.sum() < mask.size  # the body and the air outside it are told apart
    path = save_patch_pca(img, rgb, tmp_path / "figs" / "patch_pca.png", title="totalseg_A")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["patch_pca.png"]


# ---------------------------------------------------------------- plots


def test_plot_embedding_writes_png(tmp_path):
    x, labels = _two_clusters(n_per=8)
    y, _ = pca(x, 2)
    out = plot_embedding(y, labels, tmp_path / "emb.png", title="t", label_names={0: "liver", 1: "spleen"})
    assert out == tmp_path / "emb.png" and out.read_bytes()[:8] == PNG_MAGIC
    many = np.arange(16).repeat(2)
    plot_embedding(np.random.default_rng(0).normal(size=(32, 2)), many, tmp_path / "many.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.png", "many.png"]  # no temporary file left
    with pytest.raises(ValueError, match="points"):
        plot_embedding(np.zeros((4, 3)), np.zeros(4), tmp_path / "bad.png")
