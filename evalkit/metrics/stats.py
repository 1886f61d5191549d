"""Paired statistics for comparing a quantized variant with its base on the same documents.

Every function here is pure (numpy/scipy only) and seeded: the same inputs and seed give the
same numbers on every machine.

Inputs are per-document scores of the SAME documents in the SAME order for both models
(``base[i]`` and ``variant[i]`` score document ``i``). Pairing matters: two models are
strongly correlated on which documents they get right, so a paired test is far more
sensitive than comparing two independent means with their standard errors.

Choices, and why:

* **Confidence interval of the difference**: paired percentile bootstrap over documents
  (resample document indices with replacement, the same indices for both models). It needs
  no normality assumption and works for any per-document metric and any statistic.
* **Significance for 0/1 metrics** (``acc``, ``acc_norm``, ``exact_match``): McNemar's test on
  the discordant pairs; exact binomial when ``b + c < 25``, otherwise chi-square with
  continuity correction -- the usual rule of thumb, where the normal approximation of the
  binomial is adequate.
* **Significance for other metrics** (F1, BLEU, per-document log-likelihoods): a paired
  sign-flip permutation test on the mean difference. Under the null hypothesis "the two
  models are exchangeable on every document" each difference is symmetric around 0, so
  flipping its sign leaves the distribution unchanged. Wilcoxon signed-rank was not chosen:
  it drops zero differences (most documents, for near-identical models) and tests a median
  shift rather than the mean difference that the bootstrap interval reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Rows of the (resamples x n) index matrix drawn at once; bounds memory to roughly
#: ``_CHUNK_ELEMS`` int64 + float64 values per chunk whatever n is.
_CHUNK_ELEMS = 4_000_000

#: Below this many discordant pairs McNemar uses the exact binomial test.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``stat(variant) - stat(base)``.

    Attributes:
        delta: the observed difference on all documents, ``stat(variant) - stat(base)``.
        ci_low: lower bound of the percentile interval.
        ci_high: upper bound of the percentile interval.
        n: number of paired documents.
        resamples: number of bootstrap resamples.
        confidence: confidence level of the interval (0.95 = 95 %).
    """

    delta: float
    ci_low: float
    ci_high: float
    n: int
    resamples: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0 (False if it is NaN)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired 0/1 outcomes.

    Attributes:
        b: documents the base gets right and the variant gets wrong.
        c: documents the base gets wrong and the variant gets right.
        statistic: ``min(b, c)`` for the exact test; ``(|b - c| - 1)^2 / (b + c)`` for the
            chi-square test.
        p_value: two-sided p-value.
        exact: True when the exact binomial test was used.
    """

    b: int
    c: int
    statistic: float
    p_value: float
    exact: bool


@dataclass(frozen=True)
class PermutationResult:
    """Paired sign-flip permutation test on the mean difference.

    Attributes:
        delta: observed mean of ``variant - base``.
        p_value: two-sided p-value, ``(1 + #{|perm| >= |observed|}) / (1 + resamples)``.
        n: number of paired documents.
        resamples: number of random sign flips.
    """

    delta: float
    p_value: float
    n: int
    resamples: int


def _paired(base: np.ndarray, variant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(base, dtype=float).ravel()
    v = np.asarray(variant, dtype=float).ravel()
    if b.shape != v.shape:
        raise ValueError(
            f"paired scores need the same documents: base has {b.size}, variant {v.size}"
        )
    if np.isnan(b).any() or np.isnan(v).any():
        raise ValueError("per-document scores contain NaN; drop or score those documents first")
    return b, v


def _check_bootstrap_args(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def paired_bootstrap(
    base: np.ndarray,
    variant: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stat: Callable[..., np.ndarray] = np.mean,
) -> BootstrapResult:
    """Paired percentile bootstrap of ``stat(variant) - stat(base)`` over documents.

    Each resample draws ``n`` document indices with replacement and applies the SAME
    indices to both arrays, so the correlation between the models is kept. The interval is
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled
    differences. Resamples are drawn as a ``(resamples x n)`` index matrix in chunks.

    Args:
        base: per-document scores of the base model.
        variant: per-document scores of the variant on the same documents, same order.
        resamples: number of bootstrap resamples.
        confidence: confidence level in (0, 1).
        seed: seed of the index generator (numpy PCG64).
        stat: reduction applied per resample; must accept ``axis=`` (np.mean, np.median).

    Returns:
        The observed difference and its interval. With no documents every number is NaN;
        with identical arrays the difference and both bounds are exactly 0.

    Raises:
        ValueError: arrays of different length, NaN scores, or bad resamples/confidence.
    """
    _check_bootstrap_args(resamples, confidence)
    b, v = _paired(base, variant)
    n = b.size
    if n == 0:
        nan = float("nan")
        return BootstrapResult(nan, nan, nan, 0, resamples, confidence)
    delta = float(stat(v) - stat(b))
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, _CHUNK_ELEMS // n))
    boot = np.empty(resamples, dtype=float)
    for start in range(0, resamples, rows):
        m = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        boot[start : start + m] = stat(v[idx], axis=1) - stat(b[idx], axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(delta, float(lo), float(hi), int(n), int(resamples), float(confidence))


def independent_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stat: Callable[..., np.ndarray] = np.median,
) -> BootstrapResult:
    """Two-sample percentile bootstrap of ``stat(b) - stat(a)`` for unpaired samples.

    For measurements with no pairing between the two samples (per-request latencies of two
    runs): each resample draws ``len(a)`` values of ``a`` and, independently, ``len(b)``
    values of ``b`` with replacement. The interval says how far the statistic moves from
    the spread of the values alone; noise between runs that the values do not show (a
    busier machine on one day) is not in it.

    Args:
        a: first sample (e.g. run A's per-request TTFTs).
        b: second sample.
        resamples: number of bootstrap resamples.
        confidence: confidence level in (0, 1).
        seed: seed of the index generator (numpy PCG64).
        stat: reduction applied per resample; must accept ``axis=`` (np.median, np.mean).

    Returns:
        ``delta = stat(b) - stat(a)`` and its interval (``n`` = the smaller sample size);
        NaN throughout when either sample is empty.

    Raises:
        ValueError: NaN values, or bad resamples/confidence.
    """
    _check_bootstrap_args(resamples, confidence)
    first = np.asarray(a, dtype=float).ravel()
    second = np.asarray(b, dtype=float).ravel()
    if np.isnan(first).any() or np.isnan(second).any():
        raise ValueError("samples contain NaN; drop those values first")
    if first.size == 0 or second.size == 0:
        nan = float("nan")
        return BootstrapResult(nan, nan, nan, 0, resamples, confidence)
    delta = float(stat(second) - stat(first))
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, _CHUNK_ELEMS // max(first.size, second.size)))
    boot = np.empty(resamples, dtype=float)
    for start in range(0, resamples, rows):
        chunk = min(rows, resamples - start)
        ix = rng.integers(0, first.size, size=(chunk, first.size))
        iy = rng.integers(0, second.size, size=(chunk, second.size))
        boot[start : start + chunk] = stat(second[iy], axis=1) - stat(first[ix], axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(delta, float(lo), float(hi), int(min(first.size, second.size)),
                           int(resamples), float(confidence))


@dataclass(frozen=True)
class GainResult:
    """Bootstrap of a latency gain in %: ``(stat(reference) - stat(variant)) / stat(reference)
    x 100``; > 0 means the variant is faster.

    Attributes:
        gain_pct: the observed gain on all values.
        ci_low: lower bound of the percentile interval (%).
        ci_high: upper bound (%).
        n_reference: values of the reference behind it.
        n_variant: values of the variant behind it.
    """

    gain_pct: float
    ci_low: float
    ci_high: float
    n_reference: int
    n_variant: int


def gain_interval(reference: np.ndarray, variant: np.ndarray, *, q: float = 50.0,
                  resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> GainResult:
    """Percentile-bootstrap interval of the gain of ``variant`` over ``reference`` at the
    ``q``-th percentile, for two unpaired samples (per-request latencies of two servers).

    Each resample draws both samples with replacement, independently. NaN throughout when
    either sample is empty or the reference's percentile is 0.

    Raises:
        ValueError: bad resamples/confidence.
    """
    _check_bootstrap_args(resamples, confidence)
    r = np.asarray(reference, dtype=float).ravel()
    v = np.asarray(variant, dtype=float).ravel()
    r, v = r[np.isfinite(r)], v[np.isfinite(v)]
    nan = float("nan")
    if r.size == 0 or v.size == 0 or np.percentile(r, q) == 0:
        return GainResult(nan, nan, nan, int(r.size), int(v.size))
    gain = float((np.percentile(r, q) - np.percentile(v, q)) / np.percentile(r, q) * 100)
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, _CHUNK_ELEMS // max(r.size, v.size)))
    boot = np.empty(resamples, dtype=float)
    for start in range(0, resamples, rows):
        m = min(rows, resamples - start)
        pr = np.percentile(r[rng.integers(0, r.size, size=(m, r.size))], q, axis=1)
        pv = np.percentile(v[rng.integers(0, v.size, size=(m, v.size))], q, axis=1)
        boot[start:start + m] = (pr - pv) / pr * 100
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return GainResult(gain, float(lo), float(hi), int(r.size), int(v.size))


def mcnemar(base_correct: np.ndarray, variant_correct: np.ndarray) -> McNemarResult:
    """McNemar's test of whether base and variant have the same accuracy on paired documents.

    ``b`` counts documents only the base gets right, ``c`` those only the variant gets
    right. With ``b + c < 25`` the p-value is the exact two-sided binomial test of
    ``b ~ Binomial(b + c, 1/2)`` (scipy.stats.binomtest); otherwise it is the chi-square
    test with continuity correction, ``X = (|b - c| - 1)^2 / (b + c)`` on 1 degree of
    freedom. With no discordant pair the models agree everywhere: p = 1.

    Args:
        base_correct: per-document 0/1 (or bool) outcomes of the base.
        variant_correct: per-document 0/1 outcomes of the variant, same documents and order.

    Raises:
        ValueError: arrays of different length or values other than 0/1.
    """
    b_arr, v_arr = _paired(base_correct, variant_correct)
    for name, arr in (("base_correct", b_arr), ("variant_correct", v_arr)):
        if not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError(f"{name} must hold 0/1 outcomes; McNemar needs a binary metric")
    bb, vv = b_arr.astype(bool), v_arr.astype(bool)
    b = int(np.sum(bb & ~vv))
    c = int(np.sum(~bb & vv))
    k = b + c
    if k == 0:
        return McNemarResult(b, c, 0.0, 1.0, True)
    if k < MCNEMAR_EXACT_BELOW:
        p = sps.binomtest(b, k, 0.5, alternative="two-sided").pvalue
        return McNemarResult(b, c, float(min(b, c)), float(min(1.0, p)), True)
    x = (abs(b - c) - 1.0) ** 2 / k
    return McNemarResult(b, c, float(x), float(sps.chi2.sf(x, df=1)), False)


def paired_permutation_test(
    base: np.ndarray,
    variant: np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> PermutationResult:
    """Two-sided paired sign-flip permutation test on the mean of ``variant - base``.

    Each resample multiplies every difference by an independent random sign; the p-value
    is ``(1 + #{|mean(flipped)| >= |mean(observed)|}) / (1 + resamples)`` (never 0, the
    usual Monte-Carlo correction). Use it for non-binary per-document metrics; for 0/1
    metrics use :func:`mcnemar`.

    Raises:
        ValueError: arrays of different length, NaN scores, or resamples < 1.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    b, v = _paired(base, variant)
    n = b.size
    if n == 0:
        return PermutationResult(float("nan"), float("nan"), 0, resamples)
    d = v - b
    observed = float(d.mean())
    if not np.any(d):
        return PermutationResult(0.0, 1.0, int(n), resamples)
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, _CHUNK_ELEMS // n))
    hits = 0
    # Relative tolerance so that permutations equal to the observed value up to float
    # rounding count as "at least as extreme".
    thresh = abs(observed) * (1 - 1e-12)
    for start in range(0, resamples, rows):
        m = min(rows, resamples - start)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs((signs * d).mean(axis=1)) >= thresh))
    return PermutationResult(observed, (1 + hits) / (1 + resamples), int(n), resamples)


def is_binary(scores: np.ndarray) -> bool:
    """True when every score is 0 or 1 (a correct/incorrect metric, fit for McNemar)."""
    arr = np.asarray(scores, dtype=float)
    return bool(arr.size) and bool(np.isin(arr, (0.0, 1.0)).all())


def recovery_pct(base: float, variant: float, higher_is_better: bool) -> float:
    """How much of the base model's quality the variant keeps, in percent.

    ``variant / base x 100`` for higher-is-better metrics (accuracy) and ``base / variant
    x 100`` for lower-is-better ones (perplexity), so 100 % means "as good as base" and
    less means worse in both cases.

    Returns:
        NaN when either value is NaN, or the denominator is 0.
    """
    b, v = float(base), float(variant)
    if math.isnan(b) or math.isnan(v):
        return float("nan")
    num, den = (v, b) if higher_is_better else (b, v)
    if den == 0 or b == 0:
        return float("nan")
    return num / den * 100.0
