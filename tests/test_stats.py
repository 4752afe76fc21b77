"""Statistics for method comparison: against scipy, hand-worked cases and bootstrap properties."""

import math

import numpy as np
import pytest
from scipy import stats as st

from common.evaluation.stats import (
    bootstrap_ci,
    compare_methods,
    mean_sd,
    paired_bootstrap_ci,
    significance_marker,
    t_test_independent,
    t_test_paired,
    wilcoxon_signed_rank,
)

A = [0.81, 0.79, 0.84, 0.80, 0.83]
B = [0.78, 0.77, 0.80, 0.79, 0.80]


def test_mean_sd():
    mean, sd = mean_sd(A)
    assert mean == pytest.approx(0.814)
    assert sd == pytest.approx(np.std(A, ddof=1))
    assert sd == pytest.approx(math.sqrt(sum((x - 0.814) ** 2 for x in A) / 4))
    one_mean, one_sd = mean_sd([0.7])
    assert one_mean == 0.7 and math.isnan(one_sd)
    with pytest.raises(ValueError, match="2 NaN"):
        mean_sd([0.1, float("nan"), 0.3, float("nan")])
    with pytest.raises(ValueError):
        mean_sd([])


def test_t_tests_against_scipy():
    for equal_var in (True, False):
        t, p = t_test_independent(A, B, equal_var=equal_var)
        ref = st.ttest_ind(A, B, equal_var=equal_var)
        assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-10)
    t, p = t_test_paired(A, B)
    ref = st.ttest_rel(A, B)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-10)
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 12), rng.normal(0.4, 2, 7)
    for equal_var in (True, False):
        ref = st.ttest_ind(x, y, equal_var=equal_var)
        assert t_test_independent(x, y, equal_var) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)


def test_t_statistic_hand_worked():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    # means 2 and 4, sample variances 1 and 4.
    # Student: s_p^2 = (2*1 + 2*4) / 4 = 2.5, se = sqrt(2.5 * (1/3 + 1/3)) = sqrt(5/3),
    # t = -2 / sqrt(5/3), df = 4.
    t, p = t_test_independent(a, b)
    assert t == pytest.approx(-2.0 / math.sqrt(5.0 / 3.0), rel=1e-12)
    assert p == pytest.approx(2 * st.t.sf(2.0 / math.sqrt(5.0 / 3.0), 4), rel=1e-12)
    # Welch: se = sqrt(1/3 + 4/3) (same t, equal n), df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17.
    t, p = t_test_independent(a, b, equal_var=False)
    assert t == pytest.approx(-2.0 / math.sqrt(5.0 / 3.0), rel=1e-12)
    assert p == pytest.approx(2 * st.t.sf(2.0 / math.sqrt(5.0 / 3.0), 50.0 / 17.0), rel=1e-12)
    # Paired: d = [-1, -2, -3], mean -2, sd 1, t = -2 / (1 / sqrt(3)) = -2 sqrt(3), df = 2.
    t, p = t_test_paired(a, b)
    assert t == pytest.approx(-2.0 * math.sqrt(3.0), rel=1e-12)
    assert p == pytest.approx(2 * st.t.sf(2.0 * math.sqrt(3.0), 2), rel=1e-12)


def test_t_test_degenerate_and_invalid():
    t, p = t_test_independent([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert t == -math.inf and p == 0.0
    t, p = t_test_independent([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(t) and math.isnan(p)
    with pytest.raises(ValueError, match="at least 2"):
        t_test_independent([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="length"):
        t_test_paired([1.0, 2.0, 3.0], [1.0, 2.0])


def test_wilcoxon_against_scipy():
    w, p = wilcoxon_signed_rank(A, B)
    ref = st.wilcoxon(np.round(np.subtract(A, B), 12))  # exact decimal differences 0.03 tie
    assert (w, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert w == 0.0 and p == pytest.approx(2 / 2**5)  # all 5 differences positive: 2 of 32 sign patterns
    rng = np.random.default_rng(0)
    for n in (8, 30, 80):  # exact (n <= 50) and normal approximation
        x, y = rng.normal(0, 1, n), rng.normal(0.3, 1, n)
        ref = st.wilcoxon(x, y)
        assert wilcoxon_signed_rank(x, y) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)
    # A zero difference is discarded.
    w0, p0 = wilcoxon_signed_rank(A + [0.5], B + [0.5])
    assert (w0, p0) == pytest.approx((w, p))


def test_wilcoxon_invalid():
    with pytest.raises(ValueError, match="all 3 paired differences are zero"):
        wilcoxon_signed_rank([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    with pytest.raises(ValueError, match="length"):
        wilcoxon_signed_rank([0.8, 0.7], [0.8])
    with pytest.raises(ValueError, match="1 NaN"):
        wilcoxon_signed_rank([0.8, float("nan")], [0.8, 0.7])


def test_bootstrap_ci_properties():
    low, high = bootstrap_ci(A)
    assert low <= np.mean(A) <= high
    assert bootstrap_ci(A, seed=5) == bootstrap_ci(A, seed=5)
    x = np.random.default_rng(2).normal(size=40)
    assert bootstrap_ci(x, n_resamples=500, seed=5) == bootstrap_ci(x, n_resamples=500, seed=5)
    assert bootstrap_ci(x, n_resamples=500, seed=5) != bootstrap_ci(x, n_resamples=500, seed=6)
    assert bootstrap_ci([0.7] * 6) == pytest.approx((0.7, 0.7), abs=1e-12)
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.8, 0.05, 10), rng.normal(0.8, 0.05, 1000)
    width_small = np.diff(bootstrap_ci(small, n_resamples=2000))[0]
    width_large = np.diff(bootstrap_ci(large, n_resamples=2000))[0]
    assert width_large < width_small / 3
    # Wider at higher confidence; non-vectorisable statistics work too.
    assert np.diff(bootstrap_ci(A, confidence=0.99))[0] >= np.diff(bootstrap_ci(A, confidence=0.8))[0]
    med_vec = bootstrap_ci(A, statistic=np.median, n_resamples=500)
    med_loop = bootstrap_ci(A, statistic=lambda v: float(np.median(v)), n_resamples=500)
    assert med_vec == med_loop
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(A, confidence=1.0)


def test_paired_bootstrap_ci():
    low, high = paired_bootstrap_ci(A, B)
    d = np.subtract(A, B)
    assert low <= d.mean() <= high
    assert (low, high) == bootstrap_ci(d)
    assert 0.0 < low  # every pair favours A
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci(A, B[:3])


@pytest.mark.parametrize(
    "p, marker",
    [
        (1.0, "ns"),
        (0.0500001, "ns"),
        (0.05, "*"),
        (0.0100001, "*"),
        (0.01, "**"),
        (0.0010001, "**"),
        (0.001, "***"),
        (0.0001001, "***"),
        (0.0001, "****"),
        (0.0, "****"),
        (float("nan"), "n/a"),
    ],
)
def test_significance_marker(p, marker):
    assert significance_marker(p) == marker


def test_significance_marker_invalid():
    with pytest.raises(ValueError):
        significance_marker(1.5)


def test_compare_methods():
    scores = {
        "scratch": B,
        "ssl": A,
        "suprem": [0.80, 0.78, 0.82, 0.81, 0.79],
    }
    for paired in (True, False):
        rows = compare_methods(scores, "scratch", paired=paired, n_resamples=500)
        assert [r["method"] for r in rows] == ["scratch", "ssl", "suprem"]
        base, ssl = rows[0], rows[1]
        assert base["test"] is None and base["p"] is None and base["delta"] == 0.0
        assert ssl["mean"] == pytest.approx(np.mean(A)) and ssl["sd"] == pytest.approx(np.std(A, ddof=1))
        assert ssl["ci_low"] <= ssl["mean"] <= ssl["ci_high"]
        assert ssl["delta"] == pytest.approx(np.mean(A) - np.mean(B))
        for row in rows[1:]:
            assert row["marker"] == significance_marker(row["p"])
        if paired:
            assert ssl["test"] == "wilcoxon"
            assert (ssl["statistic"], ssl["p"]) == pytest.approx(wilcoxon_signed_rank(A, B))
        else:
            assert ssl["test"] == "t-test"
            assert ssl["p"] == pytest.approx(st.ttest_ind(A, B).pvalue)
            assert ssl["marker"] == "*"  # p = 0.045
    with pytest.raises(KeyError):
        compare_methods(scores, "missing", paired=False)
    with pytest.raises(ValueError, match="copy vs scratch"):
        compare_methods({"scratch": B, "copy": list(B)}, "scratch", paired=True, n_resamples=100)
