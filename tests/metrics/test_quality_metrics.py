"""Tests for evalkit.metrics.quality on inputs small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evalkit.metrics import quality as q


def test_wilson_interval_known_values():
    # p = 0.5, n = 100, 95 %: 0.5 +/- 1.96 * sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
    lo, hi = q.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = q.wilson_interval(0, 30)  # no flips: the upper bound is not 0
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / 30 / (1 + 1.96**2 / 30), abs=1e-3)
    assert all(math.isnan(x) for x in q.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="k must be"):
        q.wilson_interval(5, 3)


def test_flips_counts_both_directions():
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    var = [1, 0, 1, 1, 0, 0, 0, 1]
    f = q.flips(base, var)
    assert (f.n, f.c2w, f.w2c) == (8, 2, 1)
    assert f.c2w_rate.value == 2 / 8 and f.w2c_rate.value == 1 / 8
    assert f.flip_rate.value == 3 / 8
    assert f.flip_rate.ci_low < 3 / 8 < f.flip_rate.ci_high
    # equal accuracy, different documents right: delta 0, flips 2
    g = q.flips([1, 0, 1, 0], [0, 1, 1, 0])
    assert (g.c2w, g.w2c, g.flip_rate.value) == (1, 1, 0.5)
    same = q.flips(base, base)
    assert same.flip_rate.value == 0 and same.flip_rate.ci_low == 0 < same.flip_rate.ci_high
    with pytest.raises(ValueError, match="0/1"):
        q.flips([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="same documents"):
        q.flips([1, 0], [1])


def test_token_stats_by_hand():
    # one position, vocabulary of 2: P = (0.5, 0.5), Q = (0.25, 0.75)
    lb = np.log([[0.5, 0.5], [0.9, 0.1]])
    lv = np.log([[0.25, 0.75], [0.9, 0.1]])
    s = q.token_stats(lb, lv, np.array([1, 0]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert s["kld_nats"][0] == pytest.approx(kl0) and s["kld_nats"][1] == 0.0
    assert list(s["top1_agree"]) == [0.0, 1.0]  # argmax 0 (tie -> first) vs 1; then equal
    assert s["nll_base_nats"] == pytest.approx([-math.log(0.5), -math.log(0.9)])
    assert s["nll_variant_nats"] == pytest.approx([-math.log(0.75), -math.log(0.9)])
    with pytest.raises(ValueError, match="equal shape"):
        q.token_stats(lb, lv[:1], np.array([0, 0]))


def test_log_softmax_normalizes():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    lp = q.log_softmax(x)
    assert np.exp(lp).sum(axis=1) == pytest.approx([1.0, 1.0])
    assert lp[1, 0] == pytest.approx(math.log(0.5))


def test_topk_equals_full_when_k_covers_the_vocabulary():
    rng = np.random.default_rng(3)
    lb = q.log_softmax(rng.normal(size=(5, 6)))
    lv = q.log_softmax(rng.normal(size=(5, 6)))
    t = rng.integers(0, 6, size=5)
    full = q.token_stats(lb, lv, t)
    ids = np.tile(np.arange(6), (5, 1))
    rows = np.arange(5)
    approx = q.topk_token_stats(ids, lb, ids, lv, t, lb[rows, t], lv[rows, t])
    for f in q.TOKEN_FIELDS:
        assert approx[f] == pytest.approx(full[f], abs=1e-9), f


def test_topk_tail_bucket_by_hand():
    # vocabulary (a, b, c); P = (.6, .3, .1), Q = (.5, .2, .3); k = 2
    # base top-2 {a, b}: P_tail = .1; variant top-2 {a, c}: Q(b) unreported ->
    # min(q_k = .3, 1 - .8 = .2) = .2 (its true value); Q_tail = 1 - .7 = .3
    bi, bl = np.array([[0, 1]]), np.log([[0.6, 0.3]])
    vi, vl = np.array([[0, 2]]), np.log([[0.5, 0.3]])
    s = q.topk_token_stats(bi, bl, vi, vl, np.array([0]), np.log([0.6]), np.log([0.5]))
    want = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / 0.3)
    assert s["kld_nats"][0] == pytest.approx(want)
    # here the coarse-graining is the only loss: the full KL is larger
    full = sum(p * math.log(p / r) for p, r in ((0.6, 0.5), (0.3, 0.2), (0.1, 0.3)))
    assert s["kld_nats"][0] == pytest.approx(full)  # c is the tail bucket by itself
    assert s["top1_agree"][0] == 1.0


def test_summarize_distances_weights_tokens_and_bootstraps_sequences():
    seqs = [
        {"kld_nats": np.array([0.0, 0.2]), "top1_agree": np.array([1.0, 0.0]),
         "nll_base_nats": np.array([1.0, 1.0]), "nll_variant_nats": np.array([1.0, 3.0])},
        {"kld_nats": np.array([0.1]), "top1_agree": np.array([1.0]),
         "nll_base_nats": np.array([1.0]), "nll_variant_nats": np.array([2.0])},
    ]
    s = q.summarize_distances(seqs, resamples=500, seed=1)
    assert s.sequences == 2 and s.tokens == 3
    assert s.kld_mean.value == pytest.approx(0.1)
    assert s.top1_agreement.value == pytest.approx(2 / 3)
    assert s.ppl_base.value == pytest.approx(math.e)
    assert s.ppl_variant.value == pytest.approx(math.exp(2.0))
    assert s.kld_p99.value == pytest.approx(np.percentile([0, 0.2, 0.1], 99))
    for e in (s.kld_mean, s.top1_agreement, s.ppl_variant, s.kld_p99):
        assert e.ci_low <= e.value <= e.ci_high
    # resampling whole sequences: seq 2 alone gives 0.1, seq 1 alone 0.1 as well
    assert s.kld_mean.ci_low == pytest.approx(0.1) and s.kld_mean.ci_high == pytest.approx(0.1)
    same = q.summarize_distances([{f: np.zeros(4) if f == "kld_nats" else np.ones(4)
                                   for f in q.TOKEN_FIELDS}] * 3)
    assert same.kld_mean.value == 0 and same.kld_mean.ci_high == 0
    assert same.top1_agreement.value == 1
    with pytest.raises(ValueError, match="at least one"):
        q.summarize_distances([])
