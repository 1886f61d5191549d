"""Latency points and the gains between two variants, as tidy tables for reports and summaries.

A *point* is one variant measured at one mode x workload x concurrency (server: requests in
flight; offline: batch size). :func:`latency_points` turns a run's records into one row per
point, with what a reader needs to judge it: its p50 figures and intervals, its workload
*regime*, how many trials it rests on, the host it was measured on, and whether it passed the
validity checks. :func:`point_gains` compares two variants point by point with bootstrap
intervals from the per-request values (:func:`evalkit.stages.latency.raw.request_samples`).

Pure functions of DataFrames; nothing here reads files.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalkit.metrics import stats

#: prompts at least this long make a point "long-prompt prefill" (prefill dominates TTFT).
LONG_PROMPT_TOKENS = 2048
#: server concurrency from which a point is "high-concurrency serving".
HIGH_CONCURRENCY = 16

#: Workload regimes, in the order pages list them, with the rule that puts a point there.
REGIMES: dict[str, str] = {
    "batch-1 decode": "one request at a time (server concurrency 1, or an offline batch of 1), "
                      f"prompts under {LONG_PROMPT_TOKENS} tokens: time per output token decides",
    "low-concurrency serving": f"server, 2 to {HIGH_CONCURRENCY - 1} requests in flight, prompts "
                               f"under {LONG_PROMPT_TOKENS} tokens",
    "high-concurrency serving": f"server, {HIGH_CONCURRENCY} or more requests in flight, prompts "
                                f"under {LONG_PROMPT_TOKENS} tokens",
    "long-prompt prefill": f"prompts of {LONG_PROMPT_TOKENS} tokens or more, served at any "
                           "concurrency (or an offline batch of 1): prefill decides TTFT",
    "offline throughput": "whole batches of 2 or more prompts through vllm.LLM: generated "
                          "tokens per second decide",
}

#: The figure each regime's recommendation is decided on (see :func:`evalkit.analysis.verdicts`).
DECIDING_METRIC: dict[str, str] = {
    "batch-1 decode": "e2el_ms", "low-concurrency serving": "e2el_ms",
    "high-concurrency serving": "e2el_ms", "long-prompt prefill": "e2el_ms",
    "offline throughput": "output_throughput_tok_s",
}

KEY = ["mode", "workload", "concurrency"]
POINT_COLUMNS = [
    "variant", "scheme", "mode", "workload", "input_len", "output_len", "concurrency", "regime",
    "hardware", "other_host", "trials", "single_trial", "status", "note",
    "ttft_ms", "ttft_lo", "ttft_hi", "tpot_ms", "tpot_lo", "tpot_hi", "e2el_ms",
    "output_throughput_tok_s", "output_tok_s_per_gpu", "request_throughput_req_s",
    "ttft_pct_of_floor", "tpot_pct_of_floor", "prefix_cache_hit_rate", "e2el_lo", "e2el_hi",
    *[f"{m}_{q}_{s}" for m in ("ttft", "tpot", "e2el") for q in ("p90", "p99")
      for s in ("ms", "lo", "hi")],
]
GAIN_COLUMNS = [
    "mode", "workload", "input_len", "output_len", "concurrency", "regime", "metric",
    "reference_value", "variant_value", "gain_pct", "ci_low_pct", "ci_high_pct", "direction",
    "valid", "trials", "other_host", "note",
]
#: metrics of :func:`point_gains`: latencies (lower is better) and throughput (higher).
GAIN_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms", "output_throughput_tok_s")


def regime(mode: str, input_len: float, concurrency: float) -> str:
    """The workload regime of a point (see :data:`REGIMES`)."""
    c = int(concurrency)
    if mode == "offline" and c > 1:
        return "offline throughput"
    if input_len is not None and not pd.isna(input_len) and int(input_len) >= LONG_PROMPT_TOKENS:
        return "long-prompt prefill"
    if c <= 1:
        return "batch-1 decode"
    return "high-concurrency serving" if c >= HIGH_CONCURRENCY else "low-concurrency serving"


def _first(g: pd.DataFrame, metric: str, stat: str) -> float:
    v = g.loc[(g["metric"] == metric) & (g["stat"] == stat), "value"].dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def _trials(g: pd.DataFrame, mode: str) -> int:
    """Server: the trials a point pooled (1 for runs older than trials); offline: its timed
    iterations."""
    if mode == "server":
        t = g.loc[g["stat"] == "trial_spread_pct", "n"].dropna()
        return int(t.iloc[0]) if len(t) else 1
    n = g.loc[(g["metric"] == "ttft_ms") & (g["stat"] == "p50"), "n"].dropna()
    return int(n.iloc[0]) if len(n) else 1


def main_hardware(df: pd.DataFrame) -> str:
    """The device most latency points of a run were measured on."""
    hw = df.loc[(df["stage"] == "latency") & df["mode"].isin(["server", "offline"]),
                "hardware"].dropna()
    if hw.empty:
        hw = df["hardware"].dropna()
    return str(hw.mode().iloc[0]) if len(hw) else "unknown"


def latency_points(df: pd.DataFrame, *, gpus_per_engine: int = 1,
                   samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per measured latency point (server and offline), with its validity.

    Args:
        df: a run's records.
        gpus_per_engine: GPUs one engine spans (tensor parallel size), for tokens/s per GPU;
            0 for a CPU run (no per-GPU figure).
        samples: per-request values; gives offline points a min-max band over iterations.

    Returns:
        :data:`POINT_COLUMNS`: p50 TTFT/TPOT/E2E (ms) with their band (``*_lo``/``*_hi``:
        the 95% bootstrap interval of a server point's p50, the range over iterations of an
        offline point), the p90 and p99 tails with their recorded 95% intervals
        (``ttft_p90_ms``, ``ttft_p90_lo``, ``ttft_p90_hi``, ... for ttft, tpot, e2el; NaN
        where a run recorded none), output and request throughput, tokens/s per GPU, the
        regime, the
        trials pooled (``single_trial`` when 1), the point's ``hardware`` and ``other_host``
        (not the run's main device), and ``status``: ``ok``, ``invalid`` (with the failed
        check in ``note``) or ``failed``.
    """
    lat = df[(df["stage"] == "latency") & df["mode"].isin(["server", "offline"])
             & df["workload"].notna() & df["concurrency"].notna()]
    if lat.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    host = main_hardware(df)
    rows = []
    for (variant, mode, workload, conc), group in lat.groupby(["variant", *KEY], sort=False):
        timed = group[group["metric"].isin(["ttft_ms", "tpot_ms", "e2el_ms"])]
        if timed.empty:
            continue
        st = set(timed["status"].fillna("ok"))
        status = "invalid" if "invalid" in st else "ok" if st == {"ok"} else sorted(st - {"ok"})[0]
        bad = timed[timed["status"].fillna("ok") != "ok"]["note"].dropna()
        note = (str(bad.iloc[0]).split(";")[0].removeprefix("INVALID: ") if len(bad) else "")
        hw = group["hardware"].dropna()
        hardware = str(hw.iloc[0]) if len(hw) else host
        trials = _trials(group, mode)
        tok_s = _first(group, "output_throughput_tok_s", "value" if mode == "server" else "mean")
        row = {
            "variant": variant, "scheme": group["scheme"].iloc[0], "mode": mode,
            "workload": workload, "input_len": int(group["input_len"].dropna().iloc[0]),
            "output_len": int(group["output_len"].dropna().iloc[0]), "concurrency": int(conc),
            "regime": regime(mode, group["input_len"].dropna().iloc[0], conc),
            "hardware": hardware, "other_host": hardware != host, "trials": trials,
            "single_trial": trials <= 1, "status": status, "note": note,
            "e2el_ms": _first(group, "e2el_ms", "p50"),
            "output_throughput_tok_s": tok_s,
            "output_tok_s_per_gpu": tok_s / gpus_per_engine if gpus_per_engine else math.nan,
            "request_throughput_req_s": _first(group, "request_throughput_req_s", "value"),
            "ttft_pct_of_floor": _first(group, "ttft_pct_of_floor", "p50" if mode == "server"
                                        else "mean"),
            "tpot_pct_of_floor": _first(group, "tpot_pct_of_floor", "p50" if mode == "server"
                                        else "mean"),
            "prefix_cache_hit_rate": _first(group, "prefix_cache_hit_rate", "value"),
        }
        for metric in ("ttft", "tpot", "e2el"):
            row[f"{metric}_ms"] = _first(group, f"{metric}_ms", "p50")
            row[f"{metric}_lo"] = _first(group, f"{metric}_ms", "p50_ci_low")
            row[f"{metric}_hi"] = _first(group, f"{metric}_ms", "p50_ci_high")
            for quantile in ("p90", "p99"):  # the tails, with their 95% intervals where recorded
                row[f"{metric}_{quantile}_ms"] = _first(group, f"{metric}_ms", quantile)
                row[f"{metric}_{quantile}_lo"] = _first(group, f"{metric}_ms", f"{quantile}_ci_low")
                row[f"{metric}_{quantile}_hi"] = _first(group, f"{metric}_ms", f"{quantile}_ci_high")
            if metric != "e2el" and mode == "offline" and samples is not None and len(samples):
                values = samples_at(samples, variant, mode, workload, int(conc), f"{metric}_ms")["value"]
                if len(values):
                    row[f"{metric}_lo"], row[f"{metric}_hi"] = float(values.min()), float(values.max())
        rows.append(row)
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def samples_at(samples: pd.DataFrame | None, variant: str, mode: str, workload: str,
               concurrency: int, metric: str) -> pd.DataFrame:
    """One point's per-request values of one metric (columns trial, value)."""
    if samples is None or samples.empty:
        return pd.DataFrame(columns=["trial", "value"])
    s = samples[(samples["variant"] == variant) & (samples["mode"] == mode)
                & (samples["workload"] == workload) & (samples["concurrency"] == concurrency)
                & (samples["metric"] == metric)]
    return s[["trial", "value"]]


def reduction_pct(reference: float, value: float) -> float:
    """The reduction of a latency, (reference - value) / reference x 100 (> 0: faster); NaN
    without a reference value."""
    if not reference or math.isnan(reference) or math.isnan(value):
        return math.nan
    return (reference - value) / reference * 100.0


def trial_gains(reference: pd.DataFrame, variant: pd.DataFrame, q: float = 50.0) -> list[float]:
    """The reduction of each trial on its own, trial k of the variant against trial k of the
    reference (the same prompts: a trial's prompts depend on the point and trial only).
    Server points only; an offline point's trials are single values, kept in the bootstrap."""
    out = []
    for t in sorted(set(reference["trial"]) & set(variant["trial"])):
        r = reference.loc[reference["trial"] == t, "value"].to_numpy(float)
        v = variant.loc[variant["trial"] == t, "value"].to_numpy(float)
        r, v = r[np.isfinite(r)], v[np.isfinite(v)]
        if r.size and v.size and np.percentile(r, q):
            out.append(float((np.percentile(r, q) - np.percentile(v, q)) / np.percentile(r, q) * 100))
    return out


def reduction_interval(ref: pd.DataFrame, var: pd.DataFrame, *, mode: str, q: float = 50.0
                       ) -> tuple[float, float]:
    """95% interval of the reduction (ref - variant) / ref x 100 at the q-th percentile.

    A bootstrap of both per-request samples, widened on a server point of several trials to
    contain each trial's own reduction: the bootstrap resamples requests, and trials can
    differ by more than that (a wave of long prefills interleaves differently each time).
    NaN without samples.
    """
    g = stats.gain_interval(ref["value"].to_numpy(float), var["value"].to_numpy(float), q=q)
    lo, hi = g.ci_low, g.ci_high
    per_trial = trial_gains(ref, var, q) if mode == "server" else []
    if len(per_trial) > 1 and not math.isnan(lo):
        lo, hi = min(lo, *per_trial), max(hi, *per_trial)
    return lo, hi


def direction(gain: float, lo: float, hi: float) -> str:
    """*faster* / *slower* when the interval excludes 0, *level* when it contains 0;
    without an interval, *faster?* / *slower?* from the sign alone."""
    if math.isnan(gain):
        return "not measured"
    if math.isnan(lo) or math.isnan(hi):
        return "faster?" if gain > 0 else "slower?" if gain < 0 else "level"
    return "faster" if lo > 0 else "slower" if hi < 0 else "level"


def point_gains(points: pd.DataFrame, samples: pd.DataFrame | None, *, variant: str,
                reference: str, metrics: tuple[str, ...] = GAIN_METRICS) -> pd.DataFrame:
    """The variant against the reference at every point both measured, per metric.

    ``gain_pct`` is the reduction (reference - variant) / reference x 100 for latencies and
    the increase (variant - reference) / reference x 100 for throughput: > 0 always means the
    variant is better. Latency intervals come from :func:`reduction_interval` (p50 of the
    per-request values); throughput has one pooled value per point and no interval.
    ``valid`` is false where either variant's point failed a validity check (``note`` says
    which); such rows carry no verdict anywhere.
    """
    a = points[points["variant"] == reference].set_index(KEY)
    b = points[points["variant"] == variant].set_index(KEY)
    rows = []
    for key in [k for k in a.index if k in b.index]:
        ra, rb = a.loc[key], b.loc[key]
        mode, workload, conc = key
        valid = ra["status"] == "ok" and rb["status"] == "ok"
        note = "; ".join(f"{n}: {r['status']} ({r['note']})" for n, r in
                         ((reference, ra), (variant, rb)) if r["status"] != "ok")
        for m in metrics:
            ref_v, var_v = float(ra[m]), float(rb[m])
            lo = hi = math.nan
            if m == "output_throughput_tok_s":
                gain = (var_v - ref_v) / ref_v * 100 if ref_v else math.nan
            else:
                gain = reduction_pct(ref_v, var_v)
                if not math.isnan(gain):
                    lo, hi = reduction_interval(samples_at(samples, reference, mode, workload, conc, m),
                                                samples_at(samples, variant, mode, workload, conc, m),
                                                mode=mode)
            rows.append({
                "mode": mode, "workload": workload, "input_len": ra["input_len"],
                "output_len": ra["output_len"], "concurrency": conc, "regime": ra["regime"],
                "metric": m, "reference_value": ref_v, "variant_value": var_v,
                "gain_pct": gain, "ci_low_pct": lo, "ci_high_pct": hi,
                "direction": direction(gain, lo, hi) if valid else "invalid",
                "valid": bool(valid), "trials": int(min(ra["trials"], rb["trials"])),
                "other_host": bool(ra["other_host"] or rb["other_host"]), "note": note,
            })
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def slo_attainment(samples: pd.DataFrame | None, slo: dict[str, float]) -> pd.DataFrame:
    """Share of a server point's requests meeting every SLO, per variant x point.

    Args:
        samples: per-request values (metric names as in ``slo``; a request's metrics share
            its trial and request index).
        slo: limits in ms, e.g. ``{"ttft_ms": 2000, "tpot_ms": 50}``.

    Returns:
        variant, mode, workload, concurrency, requests, good, attainment (0..1).
    """
    cols = ["variant", "mode", "workload", "concurrency", "requests", "good", "attainment"]
    if samples is None or samples.empty or not slo or "request" not in samples:
        return pd.DataFrame(columns=cols)
    s = samples[(samples["mode"] == "server") & samples["metric"].isin(list(slo))]
    if s.empty:
        return pd.DataFrame(columns=cols)
    wide = s.pivot_table(index=["variant", "mode", "workload", "concurrency", "trial", "request"],
                         columns="metric", values="value", aggfunc="first")
    ok = np.ones(len(wide), dtype=bool)
    for m, limit in slo.items():
        # a request without the figure (TPOT of a 1-token output) cannot be shown to meet it
        ok &= (wide[m] <= limit).to_numpy() if m in wide else False
    wide = wide.assign(good=ok).reset_index()
    g = wide.groupby(["variant", "mode", "workload", "concurrency"], sort=False)["good"]
    out = pd.DataFrame({"requests": g.size(), "good": g.sum()}).reset_index()
    out["attainment"] = out["good"] / out["requests"]
    return out[cols]


def goodput(points: pd.DataFrame, samples: pd.DataFrame | None,
            slo: dict[str, float]) -> pd.DataFrame:
    """Goodput of every valid server point: requests per second that meet every SLO.

    goodput = SLO attainment x the point's request throughput (completed requests over the
    trials' wall time), which is vLLM's definition (good requests / duration) pooled over
    trials. Columns: the point's variant, its scheme (when the points name it: figures colour
    a variant by its scheme), workload, concurrency, regime, status, attainment,
    request_throughput_req_s, goodput_req_s.
    """
    att = slo_attainment(samples, slo)
    cols = ["variant", *(["scheme"] if "scheme" in points else []), "workload", "concurrency",
            "regime", "status", "attainment", "request_throughput_req_s", "goodput_req_s"]
    if att.empty:
        return pd.DataFrame(columns=cols)
    m = points[points["mode"] == "server"].merge(
        att, on=["variant", "mode", "workload", "concurrency"], how="inner")
    m["goodput_req_s"] = m["attainment"] * m["request_throughput_req_s"]
    return m[cols]
