"""Statistics for comparing pre-training methods: mean ± sd, bootstrap CIs, paired and unpaired tests.

Two reporting conventions from the literature are covered:

* a 3D self-supervised-learning benchmark: percentile-bootstrap confidence intervals and two-sided
  paired Wilcoxon signed-rank tests between methods evaluated on the same cases / seeds;
* SuPreM: mean ± sd over independent trials and two-sided independent two-sample t-tests against
  training from scratch, with the star markers of :func:`significance_marker`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as _st

ArrayLike = Sequence[float] | np.ndarray

# Bootstrap resamples are drawn in batches of at most this many elements (bounds memory for long samples).
_BOOTSTRAP_BATCH_ELEMENTS = 1_000_000


def _as_sample(values: ArrayLike, name: str = "values", min_size: int = 1) -> np.ndarray:
    """``values`` as a 1-D float64 array; ValueError on NaNs, wrong shape or fewer than ``min_size``."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    n_nan = int(np.isnan(x).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s) out of {x.size}")
    if x.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} value(s), got {x.size}")
    return x


def _as_pair(a: ArrayLike, b: ArrayLike, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_sample(a, "a", min_size), _as_sample(b, "b", min_size)
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return x, y


def mean_sd(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation ``sd = sqrt(sum_i (x_i - mean)^2 / (n - 1))`` (ddof=1).

    The sd of a single value is NaN (undefined). NaNs in the input raise ValueError (naming how many),
    so that a failed run cannot silently shrink the sample.
    """
    x = _as_sample(values)
    sd = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    return float(np.mean(x)), sd


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[..., float] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` (Efron & Tibshirani 1993, ch. 13).

    ``n_resamples`` samples of size n are drawn with replacement from ``values`` (a
    ``numpy.random.Generator`` seeded with ``seed``, so the result is deterministic for a seed); the
    interval is ``(q_{alpha/2}, q_{1-alpha/2})`` of the resampled statistics, ``alpha = 1 - confidence``
    (quantiles with linear interpolation). ``statistic`` is called as ``statistic(batch, axis=1)`` when
    it accepts ``axis`` (numpy reductions), otherwise once per resample.
    """
    x = _as_sample(values)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n = x.size
    batch = max(1, _BOOTSTRAP_BATCH_ELEMENTS // n)
    results = []
    for start in range(0, n_resamples, batch):
        resamples = x[rng.integers(0, n, size=(min(batch, n_resamples - start), n))]
        try:
            values_b = np.asarray(statistic(resamples, axis=1), dtype=np.float64)
        except TypeError:
            values_b = np.array([statistic(r) for r in resamples], dtype=np.float64)
        if values_b.shape != (resamples.shape[0],):
            values_b = np.array([statistic(r) for r in resamples], dtype=np.float64)
        results.append(values_b)
    alpha = 1.0 - confidence
    low, high = np.quantile(np.concatenate(results), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean difference ``mean(a - b)`` of paired samples.

    Pairs ``(a_i, b_i)`` are resampled together (same case / seed for both methods), which for the mean
    is the bootstrap of the differences ``d_i = a_i - b_i``: ``mean(a*) - mean(b*) = mean(d*)``.
    """
    x, y = _as_pair(a, b)
    return bootstrap_ci(x - y, np.mean, confidence, n_resamples, seed)


def paired_differences(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``a - b`` divided by ``max(|a|, |b|)`` and rounded to 12 decimals: the differences
    :func:`wilcoxon_signed_rank` ranks (float noise neither splits equal differences nor makes zeros
    non-zero)."""
    x, y = _as_pair(a, b)
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()))
    return np.round((x - y) / scale, 12) if scale > 0 else x - y


def wilcoxon_signed_rank(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired samples (thin wrapper of ``scipy.stats.wilcoxon``).

    With ``d_i = a_i - b_i`` and zero differences discarded (Wilcoxon's convention), ranks ``R_i`` of
    ``|d_i|`` give ``W+ = sum_{d_i > 0} R_i`` and ``W- = sum_{d_i < 0} R_i``; the statistic is
    ``min(W+, W-)``. The p-value is exact for n <= 50 without ties, from an exhaustive permutation for
    n <= 13 with ties, and from the normal approximation ``z = (W - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24)``
    (tie-corrected) otherwise (scipy's ``method="auto"``).

    The differences are divided by ``max(|a|, |b|)`` and rounded to 12 decimals before ranking (the
    test depends only on signs and ranks): otherwise float noise turns equal differences of decimal
    scores (0.81 - 0.78 vs 0.83 - 0.80) into distinct ranks, and near-zero differences into non-zeros.
    Raises ValueError for unequal lengths, NaNs, or when every difference is zero.
    """
    d = paired_differences(a, b)
    if not np.any(d != 0):
        raise ValueError(f"all {d.size} paired differences are zero: the Wilcoxon test is undefined")
    result = _st.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return float(result.statistic), float(result.pvalue)


def _two_sided_p(t: float, df: float) -> float:
    return float(2.0 * _st.t.sf(abs(t), df))


def t_test_independent(a: ArrayLike, b: ArrayLike, equal_var: bool = True) -> tuple[float, float]:
    """Two-sided independent two-sample t-test: Student's (``equal_var``) or Welch's.

    With sample means ``m_a, m_b``, sample variances ``s_a^2, s_b^2`` (ddof=1) and sizes ``n_a, n_b``:

    * Student: ``s_p^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)``,
      ``t = (m_a - m_b) / sqrt(s_p^2 (1/n_a + 1/n_b))``, ``df = n_a + n_b - 2``;
    * Welch: ``t = (m_a - m_b) / sqrt(s_a^2/n_a + s_b^2/n_b)``,
      ``df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a - 1) + (s_b^2/n_b)^2/(n_b - 1))``
      (Welch-Satterthwaite).

    ``p = 2 * P(T_df > |t|)`` (``scipy.stats.t.sf``). Zero variance in both samples gives ``t = ±inf,
    p = 0`` when the means differ and ``nan`` when they are equal, as ``scipy.stats.ttest_ind`` does.
    """
    x, y = _as_sample(a, "a", 2), _as_sample(b, "b", 2)
    na, nb = x.size, y.size
    va, vb = np.var(x, ddof=1), np.var(y, ddof=1)
    diff = np.mean(x) - np.mean(y)
    if equal_var:
        pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
        se = np.sqrt(pooled * (1.0 / na + 1.0 / nb))
        df = float(na + nb - 2)
    else:
        qa, qb = va / na, vb / nb
        se = np.sqrt(qa + qb)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = float((qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = float(np.float64(diff) / se)
    return t, _two_sided_p(t, df)


def t_test_paired(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sided paired t-test: ``d_i = a_i - b_i``, ``t = mean(d) / (sd(d) / sqrt(n))``, ``df = n - 1``.

    ``sd`` is the sample sd (ddof=1) and ``p = 2 * P(T_{n-1} > |t|)`` (``scipy.stats.t.sf``); equivalent
    to ``scipy.stats.ttest_rel``.
    """
    x, y = _as_pair(a, b, min_size=2)
    d = x - y
    se = np.std(d, ddof=1) / np.sqrt(d.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = float(np.float64(np.mean(d)) / se)
    return t, _two_sided_p(t, float(d.size - 1))


def significance_marker(p: float) -> str:
    """Star marker of a p-value: ``"****"`` p <= 1e-4, ``"***"`` <= 1e-3, ``"**"`` <= 0.01, ``"*"`` <= 0.05.

    Otherwise ``"ns"`` (p > 0.05, not significant). A NaN p-value (undefined test) gives ``"n/a"``;
    values outside [0, 1] raise ValueError.
    """
    if np.isnan(p):
        return "n/a"
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p-value must lie in [0, 1], got {p}")
    for threshold, marker in ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (0.05, "*")):
        if p <= threshold:
            return marker
    return "ns"


def compare_methods(
    scores: Mapping[str, ArrayLike],
    baseline: str,
    paired: bool,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int | None = 0,
    equal_var: bool = True,
) -> list[dict]:
    """One row per method (dict order, the baseline included) comparing it with ``baseline``.

    Each row: ``method``, ``n``, ``mean``, ``sd`` (:func:`mean_sd`), ``ci_low``/``ci_high`` (percentile
    bootstrap CI of the mean, :func:`bootstrap_ci`), ``delta`` (mean minus the baseline's mean), ``test``
    (``"wilcoxon"`` when ``paired`` — scores of the same cases/seeds in the same order — else
    ``"t-test"``/``"welch"``, independent samples), ``statistic``, ``p`` and ``marker``
    (:func:`significance_marker`). The baseline's test fields are None.
    """
    if baseline not in scores:
        raise KeyError(f"baseline {baseline!r} not among the methods {sorted(scores)}")
    base = _as_sample(scores[baseline], baseline)
    base_mean = float(np.mean(base))
    rows = []
    for method, values in scores.items():
        x = _as_sample(values, method)
        mean, sd = mean_sd(x)
        low, high = bootstrap_ci(x, np.mean, confidence, n_resamples, seed)
        row = {"method": method, "n": int(x.size), "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}
        row["delta"] = mean - base_mean
        if method == baseline:
            row.update(test=None, statistic=None, p=None, marker=None)
        else:
            try:
                if paired:
                    test, (stat, p) = "wilcoxon", wilcoxon_signed_rank(x, base)
                else:
                    test = "t-test" if equal_var else "welch"
                    stat, p = t_test_independent(x, base, equal_var=equal_var)
            except ValueError as error:
                raise ValueError(f"{method} vs {baseline}: {error}") from error
            row.update(test=test, statistic=stat, p=p, marker=significance_marker(p))
        rows.append(row)
    return rows
