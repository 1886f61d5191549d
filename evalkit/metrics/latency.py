"""Latency metrics, pure: vLLM's per-request definitions, pooled trials and their intervals.

* TTFT per request: time from sending the request to the first streamed token.
* TPOT per request: ``(latency - TTFT) / (output_tokens - 1)``, first token excluded (vLLM's
  definition); NaN for a 1-token output (vLLM drops those from its TPOT list).
* ITL: the gaps between streamed chunks, pooled over all requests (per chunk, not per
  request).
* E2E latency per request.

A point measured in several trials pools the trials' requests for its mean and percentiles;
``p50_ci_low``/``p50_ci_high`` (and p90, p99) are a percentile bootstrap over requests,
resampled within each trial, and ``trial_spread_pct`` is (max - min) / pooled value x 100 of
the per-trial statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evalkit.core import records as rec
from evalkit.core.errors import StageError

#: Per-request metrics that get bootstrap intervals (ITL is per chunk: its pooled sample is
#: large and its percentiles already rest on thousands of gaps).
INTERVAL_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")
INTERVAL_STATS = ("p50", "p90", "p99")
#: Resamples of the per-point bootstrap.
RESAMPLES = 1000
CONFIDENCE = 0.95


def tpot_s(latency_s: float, ttft_s: float, output_tokens: int) -> float:
    """Time per output token of one request, vLLM's definition.

    ``(latency - ttft) / (output_tokens - 1)``: the decode phase per token, first token
    excluded. NaN when it cannot be computed (one or no output token, missing times).
    """
    if output_tokens is None or output_tokens <= 1:
        return math.nan
    if latency_s is None or ttft_s is None or math.isnan(latency_s) or math.isnan(ttft_s):
        return math.nan
    return (latency_s - ttft_s) / (output_tokens - 1)


def per_request_metrics(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Per-request figures from a ``vllm bench serve --save-detailed`` result.

    Args:
        detail: the saved JSON (fields ``ttfts``, ``itls``, ``latencies``, ``output_lens``,
            ``input_lens``, ``errors`` per request, and ``duration``). Without
            ``latencies`` (vLLM 0.24's client), latency = TTFT + sum(ITL) per request.

    Returns:
        dict with ``ttft_ms``, ``tpot_ms``, ``e2el_ms`` (one value per successful request;
        TPOT NaN for 1-token outputs), ``itl_ms`` (all chunk gaps of successful requests),
        ``completed``, ``failed``, ``output_tokens``, ``input_tokens``, ``duration_s`` and
        ``errors`` (the distinct error messages).
    """
    errors = list(detail.get("errors") or [])
    n = len(errors)
    ttfts = list(detail.get("ttfts") or [math.nan] * n)
    outs = list(detail.get("output_lens") or [0] * n)
    ins = list(detail.get("input_lens") or [0] * n)
    itls = list(detail.get("itls") or [[] for _ in range(n)])
    lats = request_latencies({**detail, "ttfts": ttfts, "itls": itls})
    if not (len(ttfts) == len(lats) == len(outs) == n):
        raise StageError(
            f"benchmark result has per-request lists of different lengths "
            f"(errors {n}, ttfts {len(ttfts)}, latencies {len(lats)}, output_lens {len(outs)})"
        )
    ok = [not e for e in errors]
    res: dict[str, Any] = {"ttft_ms": [], "tpot_ms": [], "e2el_ms": [], "itl_ms": []}
    for i in range(n):
        if not ok[i]:
            continue
        res["ttft_ms"].append(ttfts[i] * 1e3)
        res["e2el_ms"].append(lats[i] * 1e3)
        res["tpot_ms"].append(tpot_s(lats[i], ttfts[i], outs[i]) * 1e3)
        res["itl_ms"].extend(g * 1e3 for g in itls[i])
    res["completed"] = sum(ok)
    res["failed"] = n - sum(ok)
    res["output_tokens"] = int(sum(o for o, k in zip(outs, ok, strict=True) if k))
    res["input_tokens"] = int(sum(x for x, k in zip(ins, ok, strict=True) if k))
    res["duration_s"] = float(detail.get("duration", math.nan))
    res["errors"] = sorted({e for e in errors if e})
    return res


def request_latencies(detail: Mapping[str, Any]) -> list[float]:
    """Per-request end-to-end latency (s) of a client result.

    Older clients (vLLM 0.24) save no per-request latency. Their streaming client takes TTFT
    as the first chunk's arrival and each ITL as the gap to the previous chunk, so a streamed
    request's latency is exactly TTFT + sum(ITL) there.
    """
    if detail.get("latencies"):
        return list(detail["latencies"])
    return [t + sum(g) if t is not None and len(g) else math.nan
            for t, g in zip(detail.get("ttfts") or [], detail.get("itls") or [], strict=False)]


def point_rows(m: Mapping[str, Any], **fields: Any) -> list[dict[str, Any]]:
    """Records for one server point from :func:`per_request_metrics`.

    Percentiles are over the completed requests; when some failed, every percentile row says
    how many are not in it (they are counted in ``failed_requests``, and a capacity at an SLO
    counts them as missing it), so no failure leaves a percentile silently.
    """
    rows: list[dict[str, Any]] = []
    failed_note = (f"{m['failed']} failed request(s) not in these percentiles (see "
                   "failed_requests)" if m["failed"] else None)
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        rows += [dict(r, note=failed_note) if failed_note else r
                 for r in rec.percentile_rows(m[metric], metric=metric, unit="ms",
                                              higher_is_better=False, **fields)]
    dur = m["duration_s"]
    ok_dur = dur > 0 and not math.isnan(dur)
    rows += [
        dict(metric="output_throughput_tok_s", stat="value", unit="tok/s",
             higher_is_better=True, n=m["completed"],
             value=m["output_tokens"] / dur if ok_dur and m["completed"] else math.nan, **fields),
        dict(metric="request_throughput_req_s", stat="value", unit="req/s",
             higher_is_better=True, n=m["completed"],
             value=m["completed"] / dur if ok_dur and m["completed"] else math.nan, **fields),
        dict(metric="completed_requests", stat="value", unit="count", higher_is_better=True,
             value=float(m["completed"]), n=m["completed"] + m["failed"], **fields),
        dict(metric="failed_requests", stat="value", unit="count", higher_is_better=False,
             value=float(m["failed"]), n=m["completed"] + m["failed"],
             note="; ".join(m["errors"])[:500] or None, **fields),
    ]
    return rows


#: Server histogram -> (record metric, factor to ms). The first histogram present wins.
SERVER_HISTOGRAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ttft_ms", ("vllm:time_to_first_token_seconds",)),
    ("tpot_ms", ("vllm:request_time_per_output_token_seconds",
                 "vllm:time_per_output_token_seconds")),
    ("itl_ms", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
    ("e2el_ms", ("vllm:e2e_request_latency_seconds",)),
)


def server_metric_rows(delta: Mapping[str, Mapping[str, float]], **fields: Any
                       ) -> list[dict[str, Any]]:
    """Records from a :func:`evalkit.engine.metrics_delta` (server-side, from histograms).

    Means are exact (sum / count); percentiles are interpolated inside Prometheus buckets,
    so they are only as fine as vLLM's bucket bounds.
    """
    rows: list[dict[str, Any]] = []
    for metric, names in SERVER_HISTOGRAMS:
        name = next((n for n in names if n in delta), None)
        d = delta.get(name, {}) if name else {}
        count = d.get("count", 0.0)
        for stat in ("mean", "p50", "p90", "p99"):
            v = d.get(stat, math.nan)
            rows.append(dict(metric=metric, stat=stat, unit="ms", higher_is_better=False,
                             value=v * 1e3 if count else math.nan, n=int(count),
                             note=name or "histogram not exported", **fields))
    succ = delta.get("vllm:request_success_total", {}).get("value", math.nan)
    rows.append(dict(metric="completed_requests", stat="value", unit="count",
                     higher_is_better=True, value=succ, n=None,
                     note="vllm:request_success_total increase", **fields))
    return rows


def offline_rows(iters: list[Mapping[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """Records for one offline point from :func:`evalkit.engine.run_offline` rows.

    ``ttft_ms`` is the batch's time to its first token, ``e2el_ms`` the batch's end-to-end
    time, ``tpot_ms`` ``(e2e - ttft) / (output_len - 1)``; stats are over iterations.
    ``output_throughput_tok_s`` is generated tokens / e2e time per iteration.
    """
    rows: list[dict[str, Any]] = []
    for metric, key in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"), ("e2el_ms", "e2e_s")):
        rows += rec.percentile_rows([r[key] * 1e3 for r in iters], metric=metric, unit="ms",
                                    higher_is_better=False, **fields)
    rows += rec.percentile_rows(
        [r["output_tokens"] / r["e2e_s"] for r in iters if r["e2e_s"] > 0],
        metric="output_throughput_tok_s", unit="tok/s", higher_is_better=True,
        stats=("mean",), **fields)
    return rows


#: Per-request lists of a ``vllm bench serve --save-detailed`` result.
PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                    "queue_times", "generated_texts", "errors")


def window_detail(detail: Mapping[str, Any], mask: Sequence[bool]) -> dict[str, Any]:
    """A client result restricted to the requests of a steady-state window.

    Every per-request list keeps the requests where ``mask`` is true (in the result's own
    order, which is sending order); ``duration`` becomes the window's span, from its first
    send to its last completion, so throughputs are window throughputs.
    """
    keep = [bool(x) for x in mask]
    out = dict(detail)
    if not detail.get("latencies") and detail.get("ttfts") is not None:
        out["latencies"] = request_latencies(detail)
    for k in PER_REQUEST_KEYS:
        v = out.get(k)
        if isinstance(v, list) and len(v) == len(keep):
            out[k] = [x for x, k2 in zip(v, keep, strict=True) if k2]
    starts = out.get("start_times") or []
    lats = out.get("latencies") or []
    ends = [s + lat for s, lat, e in zip(starts, lats, out.get("errors") or [], strict=False)
            if not e and lat is not None and not math.isnan(lat)]
    if starts and ends:
        out["duration"] = max(ends) - min(starts)
    return out


BENCH_SUMMARY_KEYS = (
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput", "total_token_throughput",
)


def bench_summary(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The client's own summary figures (``mean_ttft_ms``, ``p99_tpot_ms``, ...)."""
    return {k: v for k, v in detail.items()
            if k in BENCH_SUMMARY_KEYS or (k.endswith("_ms") and not isinstance(v, list))}


def pool_metrics(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One point's :func:`per_request_metrics` of several trials, pooled.

    Per-request lists are concatenated (``trial_of`` says which trial each request came
    from, for the per-metric lists of :data:`INTERVAL_METRICS`), counts summed, the
    duration is the sum of the trials' durations (throughput = all tokens / all time).
    """
    if not trials:
        raise StageError("no trial to pool")
    out: dict[str, Any] = {k: [] for k in ("ttft_ms", "tpot_ms", "e2el_ms", "itl_ms")}
    out["trial_of"] = []
    for i, m in enumerate(trials):
        for k in ("ttft_ms", "tpot_ms", "e2el_ms", "itl_ms"):
            out[k].extend(m[k])
        out["trial_of"].extend([i] * len(m["ttft_ms"]))
    for k in ("completed", "failed", "output_tokens", "input_tokens"):
        out[k] = int(sum(m[k] for m in trials))
    out["duration_s"] = float(sum(m["duration_s"] for m in trials))
    out["errors"] = sorted({e for m in trials for e in m["errors"]})
    out["per_trial"] = list(trials)
    return out


def bootstrap_percentiles(samples: Sequence[Sequence[float]], qs: Sequence[float], *,
                          resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                          seed: int = 0) -> list[tuple[float, float]]:
    """Percentile-bootstrap intervals of the pooled ``qs`` percentiles of several trials.

    Each resample draws every trial's values with replacement within that trial (the
    trials keep their sizes), pools them and takes the percentiles. NaN values are dropped;
    an empty sample gives NaN intervals.

    Returns:
        One (low, high) per percentile in ``qs``.
    """
    parts = [np.asarray([v for v in s if v is not None and not math.isnan(v)], dtype=float)
             for s in samples]
    parts = [p for p in parts if p.size]
    if not parts:
        return [(math.nan, math.nan) for _ in qs]
    rng = np.random.default_rng(seed)
    boot = np.concatenate([p[rng.integers(0, p.size, size=(resamples, p.size))] for p in parts],
                          axis=1)
    stats = np.percentile(boot, list(qs), axis=1)  # (len(qs), resamples)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=1)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def interval_rows(m: Mapping[str, Any], *, seed: int = 0, **fields: Any) -> list[dict[str, Any]]:
    """Bootstrap intervals and trial spread of a pooled point (:func:`pool_metrics`).

    Rows: ``<p>_ci_low``/``<p>_ci_high`` for p50/p90/p99 of TTFT, TPOT and E2E, and, with
    more than one trial, ``trial_spread_pct`` of p50 (``n`` = trials).
    """
    rows: list[dict[str, Any]] = []
    trial_of = np.asarray(m.get("trial_of") or [], dtype=int)
    trials = len(m.get("per_trial") or [m])
    for metric in INTERVAL_METRICS:
        vals = np.asarray(m[metric], dtype=float)
        groups = [vals[trial_of == t] for t in range(trials)] if trial_of.size == vals.size \
            else [vals]
        cis = bootstrap_percentiles(groups, [float(s[1:]) for s in INTERVAL_STATS], seed=seed)
        n = int(np.isfinite(vals).sum())
        for s, (lo, hi) in zip(INTERVAL_STATS, cis, strict=True):
            for suffix, v in (("ci_low", lo), ("ci_high", hi)):
                rows.append(dict(metric=metric, stat=f"{s}_{suffix}", value=v, unit="ms",
                                 higher_is_better=False, n=n, **fields,
                                 note=f"{CONFIDENCE:.0%} percentile bootstrap over requests "
                                      f"within each of {trials} trial(s), {RESAMPLES} resamples"))
        if trials > 1:
            p50s = [float(np.nanpercentile(g, 50)) if np.isfinite(g).any() else math.nan
                    for g in groups]
            pooled = float(np.nanpercentile(vals, 50)) if np.isfinite(vals).any() else math.nan
            spread = ((max(p50s) - min(p50s)) / pooled * 100
                      if pooled and not any(math.isnan(x) for x in p50s) else math.nan)
            rows.append(dict(metric=metric, stat="trial_spread_pct", value=spread, unit="%",
                             higher_is_better=False, n=trials, **fields,
                             note="(max - min) / pooled p50 x 100 of the trials' p50: "
                                  + ", ".join(f"{x:.4g}" for x in p50s) + " ms"))
    return rows
