"""Quality signals beyond accuracy deltas: flips, KL divergence, top-1 agreement, perplexity.

Pure numpy/scipy, seeded. Two families:

* **Flips** (per task): on the same documents, how many the base gets right and the
  variant wrong (correct -> wrong, ``c2w``), the reverse (``w2c``), and their sum. Two
  variants can have the same accuracy and answer different questions correctly; the flip
  rate sees that, the accuracy delta (``(w2c - c2w) / n``) cannot. Intervals are Wilson
  score intervals of a binomial proportion over documents: documents are the independent
  units, and unlike a percentile bootstrap the interval of 0 flips is not ``[0, 0]``.
* **Distribution distance** (per variant, on held-out text): at every scored token
  position ``t`` the base's next-token distribution ``P_t`` and the variant's ``Q_t``
  (both full-vocabulary log-probabilities, natural log):

  - ``KL(P_t || Q_t) = sum_i P_t(i) (log P_t(i) - log Q_t(i))`` in nats, per token;
    reported as the mean over tokens and the 99th percentile over tokens;
  - top-1 agreement: ``argmax P_t == argmax Q_t``, the fraction of tokens;
  - perplexity of each model: ``exp(mean over tokens of -log P_t(x_t))`` with ``x_t`` the
    text's actual next token.

  Intervals come from a bootstrap over **sequences** (tokens within a sequence are not
  independent): each resample draws whole sequences with replacement and recomputes the
  token-weighted statistic.

:func:`topk_token_stats` is the approximation used where a backend returns only its top-k
log-probabilities per position (vLLM's prompt logprobs): see its docstring and
``docs/definitions.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Token statistics a distance computation returns per scored position.
TOKEN_FIELDS = ("kld_nats", "top1_agree", "nll_base_nats", "nll_variant_nats")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its interval.

    Attributes:
        value: the observed statistic.
        ci_low: lower bound of the interval.
        ci_high: upper bound.
        n: observations behind it (documents for flips, tokens for distances).
    """

    value: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies above or below 0 (False if NaN)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class FlipResult:
    """Flips of a variant against base on one task's paired documents.

    Attributes:
        n: paired documents.
        c2w: documents the base gets right and the variant wrong.
        w2c: documents the base gets wrong and the variant right.
        c2w_rate: ``c2w / n`` with its Wilson interval.
        w2c_rate: ``w2c / n`` with its Wilson interval.
        flip_rate: ``(c2w + w2c) / n`` with its Wilson interval.
    """

    n: int
    c2w: int
    w2c: int
    c2w_rate: Estimate
    w2c_rate: Estimate
    flip_rate: Estimate


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``.

    ``(p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k/n`` and
    ``z`` the two-sided normal quantile of ``confidence``. NaN for ``n = 0``.

    Raises:
        ValueError: ``k`` outside ``[0, n]`` or ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # exactly 0 (1) at k = 0 (n): the formula gives it only up to rounding
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))


def flips(base_correct: np.ndarray, variant_correct: np.ndarray,
          confidence: float = 0.95) -> FlipResult:
    """Flip counts and rates of ``variant`` against ``base`` on the same documents.

    Args:
        base_correct: per-document 0/1 outcomes of the base.
        variant_correct: per-document 0/1 outcomes of the variant, same documents, same order.
        confidence: level of the Wilson intervals.

    Raises:
        ValueError: arrays of different length, or values other than 0/1.
    """
    b = np.asarray(base_correct, dtype=float).ravel()
    v = np.asarray(variant_correct, dtype=float).ravel()
    if b.shape != v.shape:
        raise ValueError(f"flips need the same documents: base has {b.size}, variant {v.size}")
    for name, arr in (("base_correct", b), ("variant_correct", v)):
        if not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError(f"{name} must hold 0/1 outcomes (a correct/incorrect metric)")
    n = int(b.size)
    c2w = int(np.sum((b == 1) & (v == 0)))
    w2c = int(np.sum((b == 0) & (v == 1)))

    def est(k: int) -> Estimate:
        lo, hi = wilson_interval(k, n, confidence)
        return Estimate(k / n if n else math.nan, lo, hi, n)

    return FlipResult(n, c2w, w2c, est(c2w), est(w2c), est(c2w + w2c))


# ------------------------------------------------------------------ per-token distances


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log softmax over the last axis, in float64 for the sums."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def token_stats(base_logprobs: np.ndarray, variant_logprobs: np.ndarray,
                targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-token KL(base || variant), top-1 agreement and both negative log-likelihoods.

    Args:
        base_logprobs: ``(T, V)`` natural-log next-token probabilities of the base
            (float32 or float64; computed in that precision, summed in float64).
        variant_logprobs: ``(T, V)`` the same for the variant, same positions.
        targets: ``(T,)`` the actual next token at each position.

    Returns:
        ``{field: (T,) array}`` for :data:`TOKEN_FIELDS` (``top1_agree`` as 0/1 floats).

    Raises:
        ValueError: shapes that do not match.
    """
    lb, lv = np.asarray(base_logprobs), np.asarray(variant_logprobs)
    if lb.dtype not in (np.float32, np.float64):
        lb, lv = lb.astype(np.float64), lv.astype(np.float64)
    lv = lv.astype(lb.dtype, copy=False)
    t = np.asarray(targets, dtype=np.int64).ravel()
    if lb.shape != lv.shape or lb.ndim != 2 or lb.shape[0] != t.size:
        raise ValueError(f"token_stats needs (T, V) log-probs of equal shape and T targets; "
                         f"got {lb.shape}, {lv.shape}, {t.shape}")
    # elementwise in the input's precision (float32 logits: 0.5 GB less per window than
    # float64), each token's sum accumulated in float64
    kld = np.sum(np.exp(lb) * (lb - lv), axis=-1, dtype=np.float64)
    rows = np.arange(t.size)
    return {
        # KL is >= 0; rounding of two nearly equal distributions can give -1e-9
        "kld_nats": np.maximum(kld, 0.0),
        "top1_agree": (lb.argmax(axis=-1) == lv.argmax(axis=-1)).astype(float),
        "nll_base_nats": -lb[rows, t].astype(np.float64),
        "nll_variant_nats": -lv[rows, t].astype(np.float64),
    }


def topk_token_stats(base_ids: np.ndarray, base_lps: np.ndarray, variant_ids: np.ndarray,
                     variant_lps: np.ndarray, targets: np.ndarray,
                     base_target_lps: np.ndarray,
                     variant_target_lps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-token statistics from top-k log-probabilities only (vLLM's prompt logprobs).

    At each position the backend returns each model's ``k`` most likely tokens with their
    log-probabilities, plus the log-probability of the actual next token. With
    ``S`` = the base's top-k set:

    * ``P`` is coarse-grained to ``S`` plus one **tail bucket** holding ``1 - P(S)``;
    * ``Q(i)`` for ``i`` in ``S`` is the variant's reported log-probability when ``i`` is
      in the variant's top-k; otherwise it is imputed as ``min(q_k, 1 - Q(top-k))``, the
      largest value it can have (``q_k``: the variant's k-th probability);
    * the tail bucket of ``Q`` is ``max(1 - Q(S), 1e-12)``;
    * ``KL_k = sum_{i in S} P(i) log(P(i)/Q(i)) + P_tail log(P_tail / Q_tail)``.

    With every ``Q(i)`` on ``S`` known this is the KL divergence of the coarse-grained
    distributions, which by the data-processing inequality is a **lower bound** of the
    full-vocabulary KL; with imputed ``Q(i)`` it is an approximation with no guaranteed
    direction (a larger ``Q(i)`` lowers its term, a smaller ``Q_tail`` raises the tail's).
    Top-1 agreement and both perplexities are exact
    (each model's argmax is its first top-k entry; the target's log-probability is always
    returned).

    Args:
        base_ids, base_lps: ``(T, k)`` the base's top-k token ids and log-probs, any order.
        variant_ids, variant_lps: ``(T, k)`` the same for the variant.
        targets: ``(T,)`` actual next tokens.
        base_target_lps, variant_target_lps: ``(T,)`` each model's log-prob of the target.

    Returns:
        ``{field: (T,) array}`` for :data:`TOKEN_FIELDS`.
    """
    bi, bl = np.asarray(base_ids), np.asarray(base_lps, dtype=np.float64)
    vi, vl = np.asarray(variant_ids), np.asarray(variant_lps, dtype=np.float64)
    if bi.shape != bl.shape or vi.shape != vl.shape or bi.ndim != 2 or bi.shape[0] != vi.shape[0]:
        raise ValueError(f"top-k arrays must be (T, k) and match: {bi.shape}, {bl.shape}, "
                         f"{vi.shape}, {vl.shape}")
    n_tok = bi.shape[0]
    kld = np.empty(n_tok)
    agree = np.empty(n_tok)
    for pos in range(n_tok):
        base_probs = np.exp(bl[pos])
        qmap = dict(zip(vi[pos].tolist(), np.exp(vl[pos]).tolist(), strict=True))
        q_rest = max(1.0 - sum(qmap.values()), 0.0)
        q_floor = min(min(qmap.values()), q_rest)
        variant_probs = np.array([qmap.get(token, q_floor) for token in bi[pos].tolist()])
        variant_probs = np.maximum(variant_probs, 1e-12)
        p_tail = max(1.0 - base_probs.sum(), 0.0)
        q_tail = max(1.0 - variant_probs.sum(), 1e-12)
        kl = float(np.sum(base_probs * (np.log(base_probs) - np.log(variant_probs))))
        if p_tail > 0:
            kl += p_tail * (math.log(p_tail) - math.log(q_tail))
        kld[pos] = max(kl, 0.0)
        agree[pos] = float(bi[pos][int(np.argmax(bl[pos]))] == vi[pos][int(np.argmax(vl[pos]))])
    return {
        "kld_nats": kld,
        "top1_agree": agree,
        "nll_base_nats": -np.asarray(base_target_lps, dtype=np.float64).ravel(),
        "nll_variant_nats": -np.asarray(variant_target_lps, dtype=np.float64).ravel(),
    }


# ------------------------------------------------------------------ summaries over sequences


@dataclass(frozen=True)
class DistanceSummary:
    """Distribution distance of a variant against base over held-out sequences.

    Attributes:
        kld_mean: mean per-token KL(base || variant), nats.
        kld_p99: 99th percentile of the per-token KL over all tokens, nats.
        top1_agreement: fraction of tokens whose argmax agrees.
        ppl_base: perplexity of the base on the text.
        ppl_variant: perplexity of the variant on the text.
        sequences: sequences behind every statistic (the bootstrap's unit).
        tokens: scored tokens.
    """

    kld_mean: Estimate
    kld_p99: Estimate
    top1_agreement: Estimate
    ppl_base: Estimate
    ppl_variant: Estimate
    sequences: int
    tokens: int


def summarize_distances(per_sequence: Sequence[dict[str, np.ndarray]], *,
                        resamples: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> DistanceSummary:
    """Token-weighted statistics and their bootstrap intervals over sequences.

    Each resample draws as many sequences as there are, with replacement, and recomputes:
    mean KL (sum over the drawn tokens / their count), p99 KL (numpy's linear percentile of
    the drawn tokens), top-1 agreement, and each perplexity ``exp(sum nll / count)``. The
    interval is the percentile interval of the resampled statistics.

    Args:
        per_sequence: one :func:`token_stats` dict per sequence.
        resamples: bootstrap resamples.
        confidence: interval level in (0, 1).
        seed: numpy PCG64 seed.

    Raises:
        ValueError: no sequences, a sequence without tokens, or bad resamples/confidence.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1); got {resamples}, "
                         f"{confidence}")
    if not per_sequence:
        raise ValueError("summarize_distances needs at least one sequence")
    counts = np.array([len(seq_stats["kld_nats"]) for seq_stats in per_sequence], dtype=float)
    if (counts == 0).any():
        raise ValueError("every sequence needs at least one scored token")
    sums = {field: np.array([float(np.sum(seq_stats[field])) for seq_stats in per_sequence])
            for field in TOKEN_FIELDS}
    kl_tokens = [np.asarray(seq_stats["kld_nats"], dtype=float) for seq_stats in per_sequence]
    n_seq, n_tok = len(per_sequence), int(counts.sum())

    def stat(idx: np.ndarray) -> np.ndarray:
        count = counts[idx].sum(axis=-1)
        return np.stack([
            sums["kld_nats"][idx].sum(axis=-1) / count,
            sums["top1_agree"][idx].sum(axis=-1) / count,
            np.exp(sums["nll_base_nats"][idx].sum(axis=-1) / count),
            np.exp(sums["nll_variant_nats"][idx].sum(axis=-1) / count),
        ], axis=-1)

    observed = stat(np.arange(n_seq))
    p99_obs = float(np.percentile(np.concatenate(kl_tokens), 99))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_seq, size=(resamples, n_seq))
    boot = stat(idx)
    p99_boot = np.array([np.percentile(np.concatenate([kl_tokens[seq_index] for seq_index in row]), 99)
                         for row in idx])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=0)
    p_lo, p_hi = np.quantile(p99_boot, [tail, 1 - tail])

    def est(column: int) -> Estimate:
        return Estimate(float(observed[column]), float(lo[column]), float(hi[column]), n_tok)

    return DistanceSummary(
        kld_mean=est(0), kld_p99=Estimate(p99_obs, float(p_lo), float(p_hi), n_tok),
        top1_agreement=est(1), ppl_base=est(2), ppl_variant=est(3),
        sequences=n_seq, tokens=n_tok)
