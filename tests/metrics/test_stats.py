"""Tests for evalkit.metrics.stats on seeded synthetic paired data."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from evalkit.metrics.stats import (
    mcnemar,
    paired_bootstrap,
    paired_permutation_test,
    recovery_pct,
)


def correlated_bernoulli(n: int, p_base: float, p_variant: float, seed: int):
    """Paired 0/1 outcomes: the variant keeps the base's answer unless a flip happens.

    One shared uniform per document makes the two outcomes strongly correlated, as a
    quantized model is with its base: base = u < p_base, variant = u < p_variant, so
    the true difference is exactly p_variant - p_base.
    """
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    return (u < p_base).astype(float), (u < p_variant).astype(float)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_covers_known_difference_and_excludes_zero():
    base, variant = correlated_bernoulli(5000, 0.60, 0.55, seed=1)
    res = paired_bootstrap(base, variant, resamples=2000, confidence=0.95, seed=0)
    assert res.n == 5000 and res.resamples == 2000
    assert res.ci_low < -0.05 < res.ci_high
    assert res.ci_high < 0 and res.excludes_zero
    assert res.delta == pytest.approx(variant.mean() - base.mean())


def test_bootstrap_coverage_rate_is_near_nominal():
    # Independent noise on top of a shared component; true delta = -0.05.
    hits = 0
    trials = 60
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        u = rng.random(800)
        flip = rng.random(800) < 0.10
        base = (u < 0.6).astype(float)
        variant = np.where(flip, rng.random(800) < 0.1, u < 0.6).astype(float)
        truth = 0.90 * 0.6 + 0.10 * 0.1 - 0.6
        r = paired_bootstrap(base, variant, resamples=500, seed=t)
        hits += r.ci_low <= truth <= r.ci_high
    # 95 % nominal; with 60 trials, fewer than 50 hits would be very unlikely (p < 0.01).
    assert hits >= 50


def test_bootstrap_identical_arrays_give_exact_zero():
    base, _ = correlated_bernoulli(1000, 0.6, 0.6, seed=3)
    res = paired_bootstrap(base, base.copy(), resamples=300, seed=5)
    assert res.delta == 0.0 and res.ci_low == 0.0 and res.ci_high == 0.0
    assert not res.excludes_zero


def test_bootstrap_is_seeded_and_seed_matters():
    base, variant = correlated_bernoulli(2000, 0.5, 0.47, seed=7)
    a = paired_bootstrap(base, variant, resamples=400, seed=11)
    b = paired_bootstrap(base, variant, resamples=400, seed=11)
    c = paired_bootstrap(base, variant, resamples=400, seed=12)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_bootstrap_chunking_does_not_change_result(monkeypatch):
    base, variant = correlated_bernoulli(3000, 0.5, 0.45, seed=2)
    whole = paired_bootstrap(base, variant, resamples=200, seed=9)
    import evalkit.metrics.stats as st

    # Row-by-row chunks draw the same stream of indices from the generator.
    monkeypatch.setattr(st, "_CHUNK_ELEMS", 3000)
    chunked = st.paired_bootstrap(base, variant, resamples=200, seed=9)
    assert chunked == whole


def test_bootstrap_other_statistic_and_continuous_scores():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 4000)
    variant = base + 0.3 + rng.normal(0, 0.2, 4000)
    res = paired_bootstrap(base, variant, resamples=500, seed=1, stat=np.median)
    assert res.ci_low < 0.3 < res.ci_high
    assert res.delta == pytest.approx(np.median(variant) - np.median(base))


def test_bootstrap_fast_at_scale():
    base, variant = correlated_bernoulli(10_000, 0.6, 0.58, seed=4)
    t0 = time.perf_counter()
    paired_bootstrap(base, variant, resamples=2000, seed=0)
    # ~20M index draws; a loop over resamples in Python would take far longer.
    assert time.perf_counter() - t0 < 10.0


def test_bootstrap_empty_and_mismatched():
    res = paired_bootstrap(np.array([]), np.array([]), resamples=10)
    assert res.n == 0 and math.isnan(res.delta) and math.isnan(res.ci_low)
    with pytest.raises(ValueError, match="same documents"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.ones(3), np.ones(3), confidence=1.0)


# ---------------------------------------------------------------- McNemar


def _pairs(n11: int, b: int, c: int, n00: int):
    base = np.array([1] * n11 + [1] * b + [0] * c + [0] * n00, dtype=bool)
    variant = np.array([1] * n11 + [0] * b + [1] * c + [0] * n00, dtype=bool)
    return base, variant


def test_mcnemar_exact_hand_computed():
    # b=10, c=2: p = 2 * P(X <= 2 | X ~ Bin(12, 1/2)) = 2 * (1 + 12 + 66) / 4096.
    res = mcnemar(*_pairs(50, 10, 2, 30))
    assert (res.b, res.c, res.exact) == (10, 2, True)
    assert res.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert res.statistic == 2


def test_mcnemar_chi_square_hand_computed():
    # b=30, c=15: X = (15 - 1)^2 / 45; p = P(chi2_1 > X) = erfc(sqrt(X / 2)).
    res = mcnemar(*_pairs(100, 30, 15, 40))
    x = 14**2 / 45
    assert not res.exact
    assert res.statistic == pytest.approx(x)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-10)


@pytest.mark.parametrize("b,c", [(0, 7), (5, 5), (12, 12), (13, 12), (40, 22), (3, 90)])
def test_mcnemar_matches_scipy(b, c):
    res = mcnemar(*_pairs(20, b, c, 20))
    if b + c < 25:
        expect = sps.binomtest(b, b + c, 0.5).pvalue
    else:
        expect = sps.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)
    assert res.exact == (b + c < 25)
    assert res.p_value == pytest.approx(min(1.0, expect), rel=1e-12)
    assert 0.0 <= res.p_value <= 1.0


def test_mcnemar_no_discordant_pairs_and_bad_input():
    res = mcnemar(*_pairs(10, 0, 0, 5))
    assert res.p_value == 1.0 and res.b == res.c == 0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(np.array([0.5, 1.0]), np.array([1.0, 0.0]))


# ---------------------------------------------------------------- permutation test


def test_permutation_detects_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random(500)
    shifted = paired_permutation_test(base, base + 0.05 + rng.normal(0, 0.1, 500), seed=1,
                                      resamples=2000)
    assert shifted.p_value < 0.01
    null = paired_permutation_test(base, base + rng.normal(0, 0.1, 500), seed=1, resamples=2000)
    assert null.p_value > 0.01
    same = paired_permutation_test(base, base, seed=1)
    assert same.p_value == 1.0 and same.delta == 0.0


def test_permutation_is_seeded():
    rng = np.random.default_rng(3)
    base = rng.random(300)
    variant = base + rng.normal(0.01, 0.1, 300)
    assert paired_permutation_test(base, variant, seed=4) == paired_permutation_test(
        base, variant, seed=4
    )


# ---------------------------------------------------------------- recovery


def test_recovery_pct():
    assert recovery_pct(0.5, 0.45, True) == pytest.approx(90.0)
    assert recovery_pct(10.0, 12.5, False) == pytest.approx(80.0)  # perplexity got worse
    assert recovery_pct(0.4, 0.4, True) == 100.0
    assert math.isnan(recovery_pct(0.0, 0.3, True))
    assert math.isnan(recovery_pct(0.0, 3.0, False))
    assert math.isnan(recovery_pct(float("nan"), 0.3, True))
    assert math.isnan(recovery_pct(0.5, float("nan"), True))
    assert math.isnan(recovery_pct(10.0, 0.0, False))
