"""Benchmark report: results table, CKA figure, organ embeddings, patch PCA and the Markdown file."""

import json

import numpy as np
import pytest
import torch
from scipy import stats as st

from common.data import DATA_LISTS_DIR
from common.evaluation.report import (
    cka_figure,
    crop_at,
    load_labelled_ct,
    organ_embedding_figures,
    patch_pca_figure,
    results_rows,
    results_table,
    write_report,
)
from common.networks import SwinEncoder, build_segmenter, load_encoder, save_encoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datalist(prepared_data):
    data = json.loads((DATA_LISTS_DIR / "multiorgan_ct.json").read_text())
    absolute = lambda it: {**it, "image": prepared_data / it["image"], "label": prepared_data / it["label"]}  # noqa: E731
    names = [data["labels"][str(i)] for i in range(len(data["labels"]))]
    return [absolute(it) for it in data["training"]], [absolute(it) for it in data["validation"]], names


@pytest.fixture(scope="module")
def held_out_ct(datalist):
    return load_labelled_ct(datalist[1][0], pixdim=4.0)  # totalseg_A, small


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=12)
    return encoder, save_encoder(encoder, tmp_path_factory.mktemp("enc") / "encoder.pt", method="test")


def test_results_table_statistics():
    values = {
        ("scratch", 1): [0.50, 0.55, 0.61],
        ("scratch", 2): [0.60, 0.64, 0.70],
        ("simclr", 1): [0.58, 0.56, 0.70],
        ("simclr", 2): [0.71, 0.63, 0.77],
    }
    rows = [
        {
            "cell": f"{m}-{s}-{seed}",
            "method": m,
            "task": "t",
            "shots": str(s),
            "seed": str(seed),
            "mean_dice": str(v),
        }
        for (m, s), vs in values.items()
        for seed, v in enumerate(vs)
    ]
    records = results_rows(rows)
    assert [(r["method"], r["shots"]) for r in records] == [
        ("scratch", 1), ("simclr", 1), ("scratch", 2), ("simclr", 2)
    ]  # fmt: skip
    table = results_table(rows)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith("| scratch | 1 | 3 |")
    for r in records:
        v = np.array(values[(r["method"], r["shots"])])
        assert (
            r["n"] == 3 and r["mean"] == pytest.approx(v.mean()) and r["sd"] == pytest.approx(v.std(ddof=1))
        )
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
        assert f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" in table
        if r["method"] == "simclr":
            base = np.array(values[("scratch", r["shots"])])
            assert r["delta"] == pytest.approx(v.mean() - base.mean())
            assert r["p"] == pytest.approx(st.wilcoxon(v, base).pvalue)
            assert r["p_t"] == pytest.approx(st.ttest_ind(v, base).pvalue)
            assert f"| {r['p']:.3g} {r['marker']} | {r['p_t']:.3g} {r['marker_t']} |" in table
    # too few non-zero differences, a failed run and a missing baseline seed
    rows2 = [
        {"method": "scratch", "shots": 1, "seed": 0, "mean_dice": 0.5},
        {"method": "scratch", "shots": 1, "seed": 1, "mean_dice": 0.6},
        {"method": "mae", "shots": 1, "seed": 0, "mean_dice": 0.5},
        {"method": "mae", "shots": 1, "seed": 1, "mean_dice": 0.7},
        {"method": "mae", "shots": 1, "seed": 2, "mean_dice": ""},
    ]
    mae = results_rows(rows2)[1]
    assert mae["n"] == 2 and mae["failed"] == 1 and mae["n_pairs"] == 2 and np.isnan(mae["p"])
    p_t = st.ttest_ind([0.5, 0.7], [0.5, 0.6]).pvalue
    assert mae["p_t"] == pytest.approx(p_t) and mae["marker_t"] == "ns"
    assert "| 2 (+1 failed) |" in results_table(rows2) and f"| n/a | {p_t:.3g} ns |" in results_table(rows2)


def _crops(image, roi=32, n=3):
    spatial = np.array(image.shape[1:])
    centres = [spatial * f for f in ((0.3, 0.4, 0.5), (0.5, 0.5, 0.5), (0.7, 0.6, 0.5), (0.5, 0.3, 0.3))]
    return torch.stack([crop_at(image, c.astype(int), roi) for c in centres[:n]])


def test_cka_figure(tmp_path, encoder_file, held_out_ct):
    _, enc_path = encoder_file
    inputs = _crops(held_out_ct[0])
    same = build_segmenter("swinunetr", out_channels=27, feature_size=12)
    load_encoder(same.swinViT, enc_path)
    torch.save(same.state_dict(), tmp_path / "same.pt")
    values = cka_figure(enc_path, tmp_path / "same.pt", tmp_path / "cka_same.png", inputs)
    assert list(values) == ["patch_embed", "layers1", "layers2", "layers3", "layers4"]
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in values.values()), values
    assert (tmp_path / "cka_same.png").read_bytes()[:8] == PNG_MAGIC
    torch.manual_seed(123)
    other = build_segmenter("swinunetr", out_channels=27, feature_size=12)
    torch.save({"model": other.state_dict(), "epoch": 3}, tmp_path / "other.pt")
    values = cka_figure(enc_path, tmp_path / "other.pt", tmp_path / "cka_other.png", inputs)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in values.values()) and min(values.values()) < 0.99, values


def test_organ_embedding_figures(tmp_path, encoder_file, datalist):
    encoder, _ = encoder_file
    training, _, names = datalist
    out = organ_embedding_figures(encoder, training, names, tmp_path, per_class=4, max_classes=4)
    for key in ("tsne", "pca"):
        assert out[key].read_bytes()[:8] == PNG_MAGIC
    assert out["n"] == 16 and len(out["classes"]) == 4 and "liver" in out["classes"]
    assert 0.0 <= out["precision_at_k"] <= 1.0 and out["k"] == 5
    # brute force: query 0 against every other patch by cosine similarity
    e, labels = out["embeddings"], out["labels"]
    cos = (e @ e[0]) / (np.linalg.norm(e, axis=1) * np.linalg.norm(e[0]))
    others = [j for j in range(len(e)) if j != 0]
    top = sorted(others, key=lambda j: (-cos[j], j))[:5]
    assert out["per_query"][0] == pytest.approx(np.mean(labels[top] == labels[0]))
    assert out["precision_at_k"] == pytest.approx(out["per_query"].mean())


def test_patch_pca_figure(tmp_path, encoder_file, held_out_ct):
    encoder, _ = encoder_file
    path = patch_pca_figure(encoder, held_out_ct[0], tmp_path / "patch_pca.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_write_report_relative_links(tmp_path):
    (tmp_path / "figs").mkdir()
    fig = tmp_path / "figs" / "cka.png"
    fig.write_bytes(PNG_MAGIC)
    report = write_report(
        tmp_path / "out" / "report.md", [("Results", "| a |\n|---|\n| 1 |")], {"CKA": fig}, title="T"
    )
    text = report.read_text()
    assert text.startswith("# T\n") and "## Results" in text and "| 1 |" in text
    assert "![CKA](../figs/cka.png)" in text
    assert not list((tmp_path / "out").glob(".*tmp"))
