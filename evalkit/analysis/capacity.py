"""Capacity at the SLO and the rate points behind it, from a run's rate sweeps.

A rate sweep (the study's ``latency.traffic``) loads every variant with requests arriving at
rising offered rates (Poisson, or gamma when burstier); each rate point's statistics come
from its steady-state window, and a point whose queue grows through its window is
*saturated*: not sustainable, whatever its latencies. Capacity at the SLO is the highest
offered rate whose p90 TTFT and p90 TPOT meet the study's ``report.slo`` limits, read
between the measured rates, with a bootstrap interval (:mod:`evalkit.metrics.traffic`).

This module reads what the latency stage recorded of it:

* :func:`rate_points`: one row per variant x workload x offered rate (the rate curves);
* :func:`capacity_table`: one row per variant x workload: capacity per GPU with its
  interval, the gain against a reference variant, tokens/s, cost and energy at capacity;
* :func:`load_text`: every latency point's load pattern in words (burst, closed loop,
  Poisson, gamma, offline batch), as tables and figures label it.

Everything but :func:`read_capacity_files` and its wrapper :func:`capacity_table` is a pure
function of DataFrames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.core.io import read_json
from evalkit.metrics import traffic as tr
from evalkit.metrics.points import main_hardware

#: latency statistics of a rate point kept by :func:`rate_points`.
RATE_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")
RATE_COLUMNS = [
    "variant", "scheme", "workload", "load", "load_text", "input_len", "output_len",
    "concurrency_cap", "offered_rate_req_s", "arrival_rate_req_s", "achieved_rate_req_s",
    "saturated", "saturated_note", "flow_judged", "window_requests", "window_note",
    "failed_requests",
    *[f"{m.removesuffix('_ms')}_{q}{s}" for m in RATE_METRICS for q in ("p50", "p90")
      for s in ("_ms", "_lo", "_hi")],
    "output_throughput_tok_s", "request_throughput_req_s", "energy_j_per_output_token",
    "power_w", "trials", "single_trial", "hardware", "other_host", "status", "note",
]
CAPACITY_COLUMNS = [
    "variant", "scheme", "workload", "load", "input_len", "output_len",
    "req_s", "req_s_lo", "req_s_hi", "req_s_per_gpu", "req_s_per_gpu_lo", "req_s_per_gpu_hi",
    "censored", "capacity_note", "reference", "gain_pct", "gain_lo", "gain_hi", "gain_note",
    "output_tok_s_per_gpu", "output_tok_s_per_gpu_lo", "output_tok_s_per_gpu_hi",
    "cost_usd_per_m_tokens", "cost_lo", "cost_hi", "energy_j_per_token", "energy_note",
    "slo", "hardware", "status",
]


# ---- which rows are rate points, and every point's load pattern ----------------------------

def _flag(s: pd.Series) -> np.ndarray:
    """A boolean column with NA as False (string comparisons give NA on empty cells)."""
    return s.astype("boolean").fillna(False).to_numpy(dtype=bool)


def rate_rows(df: pd.DataFrame) -> pd.Series:
    """Mask of the latency server rows measured at a finite offered rate: rate-sweep points.

    Their ``concurrency`` is the client's cap on requests in flight, not a load level, so
    they are not points of the concurrency curves (a run without rate sweeps has none).
    """
    rate = pd.to_numeric(df["request_rate"], errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(rate)
    server = _flag(df["stage"].eq("latency")) & _flag(df["mode"].eq("server"))
    return pd.Series(server & finite, index=df.index, name="rate_point")


def load_of(mode: Any, load: Any, request_rate: Any) -> str:
    """A point's load pattern; records from before schema 1.3 have none and are read by how
    they were measured: offline points are batches, a server point at an infinite rate a
    burst (the client then sent fixed lengths: ``--random-range-ratio 0``), one at a finite
    rate Poisson arrivals (vLLM's default burstiness)."""
    if isinstance(load, str) and load:
        return load
    if mode == "offline":
        return "batch"
    rate = float(request_rate) if request_rate is not None and not pd.isna(request_rate) \
        else math.inf
    return "burst" if math.isinf(rate) else "poisson"


def load_text(load: str, concurrency: Any = None, request_rate: Any = None) -> str:
    """A point's load pattern in words: ``burst of 8 identical requests``, ``closed loop, 8 in
    flight``, ``Poisson 2 req/s``, ``gamma 2 req/s``, ``offline batch of 8``."""
    c = "?" if concurrency is None or pd.isna(concurrency) else f"{int(concurrency)}"
    r = "?" if request_rate is None or pd.isna(request_rate) else f"{float(request_rate):g}"
    return {"burst": f"burst of {c} identical requests", "closed": f"closed loop, {c} in flight",
            "poisson": f"Poisson {r} req/s", "gamma": f"gamma {r} req/s",
            "batch": f"offline batch of {c}"}.get(load, f"{load} ({c} in flight, {r} req/s)")


def point_loads(df: pd.DataFrame) -> pd.DataFrame:
    """The load pattern (:func:`load_of`) of every concurrency point (server and offline
    points at an infinite rate): variant, mode, workload, concurrency, load."""
    cols = ["variant", "mode", "workload", "concurrency", "load"]
    lat = df[_flag(df["stage"].eq("latency")) & _flag(df["mode"].isin(["server", "offline"]))
             & df["workload"].notna().to_numpy() & df["concurrency"].notna().to_numpy()
             & ~rate_rows(df).to_numpy()]
    if lat.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (variant, mode, workload, conc), g in lat.groupby(
            ["variant", "mode", "workload", "concurrency"], sort=False):
        loads = g["load"].dropna()
        rows.append({"variant": variant, "mode": mode, "workload": workload,
                     "concurrency": int(conc),
                     "load": load_of(mode, loads.iloc[0] if len(loads) else None,
                                     g["request_rate"].iloc[0])})
    return pd.DataFrame(rows, columns=cols)


# ---- rate points -----------------------------------------------------------------------

def _value(g: pd.DataFrame, metric: str, stat: str) -> float:
    v = g.loc[(g["metric"] == metric) & (g["stat"] == stat), "value"].dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def _first(g: pd.DataFrame, col: str) -> Any:
    v = g[col].dropna()
    return v.iloc[0] if len(v) else pd.NA


def _text(g: pd.DataFrame, metric: str, stat: str = "value") -> str:
    n = g.loc[(g["metric"] == metric) & (g["stat"] == stat), "note"].dropna()
    return str(n.iloc[0]) if len(n) else ""


def rate_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per rate point (variant x workload x load x offered rate), sorted by rate.

    Columns (:data:`RATE_COLUMNS`): the offered rate, the arrivals and completions per second
    realised in the steady-state window (``arrival_rate_req_s``, ``achieved_rate_req_s``),
    ``saturated`` with its reason, the window's request count and failed requests; per
    latency metric its p50 and p90 over the window's requests (ms) with their 95% bootstrap
    intervals (``ttft_p90_ms``, ``ttft_p90_lo``, ``ttft_p90_hi``, ...); throughput, energy
    per output token and power (NaN where not measured, e.g. on a CPU); the trials pooled
    (``single_trial``), the host (``other_host``: not the run's main device); ``status``:
    ``ok``, ``invalid`` (a validity check failed, reason in ``note``) or the worst other
    status.
    """
    rr = df[rate_rows(df).to_numpy() & df["workload"].notna().to_numpy()]
    if rr.empty:
        return pd.DataFrame(columns=RATE_COLUMNS)
    loads = rr["load"].astype("object").where(rr["load"].notna(), None)
    rr = rr.assign(_load=[load_of("server", load_value, req_rate)
                          for load_value, req_rate in zip(loads, rr["request_rate"], strict=True)])
    host = main_hardware(df)
    rows = []
    for (variant, workload, load, rate), group in rr.groupby(
            ["variant", "workload", "_load", "request_rate"], sort=False):
        timed = group[group["metric"].isin(RATE_METRICS)]
        st = set(timed["status"].fillna("ok")) or set(group["status"].fillna("ok"))
        status = "invalid" if "invalid" in st else "ok" if st == {"ok"} else sorted(st - {"ok"})[0]
        bad = group[group["status"].fillna("ok") != "ok"]["note"].dropna()
        sat = _value(group, "saturated", "value")
        offered = _value(group, "offered_rate_req_s", "value")
        spread = group.loc[group["stat"] == "trial_spread_pct", "n"].dropna()
        hw = group["hardware"].dropna()
        caps = group["concurrency"].dropna()
        row = {
            "variant": variant, "scheme": group["scheme"].iloc[0], "workload": workload,
            "load": load, "load_text": load_text(load, None, rate),
            "input_len": _first(group, "input_len"),
            "output_len": _first(group, "output_len"),
            "concurrency_cap": int(caps.iloc[0]) if len(caps) else pd.NA,
            "offered_rate_req_s": float(rate) if math.isnan(offered) else offered,
            "arrival_rate_req_s": _value(group, "arrival_rate_req_s", "value"),
            "achieved_rate_req_s": _value(group, "achieved_rate_req_s", "value"),
            # unknown (older records) is not saturated: only a measured flag says so
            "saturated": bool(sat >= 0.5) if not math.isnan(sat) else False,
            "saturated_note": _text(group, "saturated") if sat >= 0.5 else "",
            # unknown (older records) counts as judged, as those records read it
            "flow_judged": not _value(group, "flow_judged", "value") < 0.5,
            "window_requests": _value(group, "window_requests", "value"),
            "window_note": _text(group, "window_requests"),
            "failed_requests": _value(group, "failed_requests", "value"),
            "output_throughput_tok_s": _value(group, "output_throughput_tok_s", "value"),
            "request_throughput_req_s": _value(group, "request_throughput_req_s", "value"),
            "energy_j_per_output_token": _value(group, "energy_j_per_output_token", "value"),
            "power_w": _value(group, "power_w", "mean"),
            "trials": int(spread.iloc[0]) if len(spread) else 1,
            "single_trial": not (len(spread) and int(spread.iloc[0]) > 1),
            "hardware": str(hw.iloc[0]) if len(hw) else host,
            "other_host": bool(len(hw)) and str(hw.iloc[0]) != host,
            "status": status,
            "note": str(bad.iloc[0]).split(";")[0].removeprefix("INVALID: ") if len(bad) else "",
        }
        for metric in RATE_METRICS:
            short = metric.removesuffix("_ms")
            for quantile in ("p50", "p90"):
                row[f"{short}_{quantile}_ms"] = _value(group, metric, quantile)
                row[f"{short}_{quantile}_lo"] = _value(group, metric, f"{quantile}_ci_low")
                row[f"{short}_{quantile}_hi"] = _value(group, metric, f"{quantile}_ci_high")
        rows.append(row)
    out = pd.DataFrame(rows, columns=RATE_COLUMNS)
    order = {variant_name: position
             for position, variant_name in enumerate(pd.unique(df["variant"].dropna()))}
    return out.sort_values(["workload", "variant", "offered_rate_req_s"],
                           key=lambda column: column.map(order) if column.name == "variant" else column,
                           kind="stable").reset_index(drop=True)


# ---- capacity at the SLO ----------------------------------------------------------------

def read_capacity_files(run_path: str | os.PathLike[str] | None) -> dict[tuple[str, str], dict]:
    """The raw ``raw/latency/<variant>/capacity_<workload>.json`` of a run, keyed by
    (variant, workload); empty when the run has none (or no path is given)."""
    if run_path is None:
        return {}
    root = Path(run_path) / "raw" / "latency"
    out = {}
    for f in sorted(root.glob("*/capacity_*.json")):
        out[(f.parent.name, f.stem.removeprefix("capacity_"))] = read_json(f)
    return out


def capacity_gain(value: float, ref_value: float, draws: Any, ref_draws: Any, *,
                  confidence: float = 0.95) -> tuple[float, float, float]:
    """``(gain_pct, lo, hi)`` from two capacities' values and the bootstrap draws of their
    raw files (:func:`evalkit.metrics.traffic.gain_from_draws`); the interval is NaN when a
    side has no draws or their counts differ (a file from another sweep)."""
    v = list(draws) if draws is not None else []
    r = list(ref_draws) if ref_draws is not None else []
    if len(v) != len(r):
        v = r = []
    return tr.gain_from_draws(value, ref_value, v, r, confidence=confidence)


def cost_per_million_tokens(usd_per_gpu_hour: float, output_tok_s_per_gpu: float) -> float:
    """USD per million output tokens at a per-GPU throughput
    (:func:`evalkit.metrics.traffic.cost_per_million_tokens` of one GPU: the GPUs of an
    engine cancel out per GPU); NaN when the throughput is not > 0."""
    return tr.cost_per_million_tokens(usd_per_gpu_hour, 1, output_tok_s_per_gpu)


def slo_statement(limits: Mapping[str, float], percentile: float = 90.0) -> str:
    """The SLO in words, e.g. ``p90 TTFT ≤ 1000 ms and p90 TPOT ≤ 50 ms``."""
    parts = [f"p{percentile:g} {k.removesuffix('_ms').upper()} ≤ {float(v):g} ms"
             for k, v in limits.items()]
    return " and ".join(parts) if parts else "no SLO stated"


def _censored(raw: Mapping[str, Any] | None, note: str) -> str:
    if raw and raw.get("censored") in ("none", "above", "below", "unjudged"):
        return str(raw["censored"])
    if "at least the top rate" in note:
        return "above"
    if "below the lowest rate" in note:
        return "below"
    return "none"


def _gain_note(c: str, ref_c: str, ref: str) -> str:
    """What censoring makes of a gain: a bound, or nothing."""
    if c == "above" and ref_c == "above":
        return "both met the SLO at every rate measured: no gain can be read"
    if c == "above":
        return "a lower bound: this variant met the SLO at every rate measured"
    if ref_c == "above":
        return f"an upper bound: `{ref}` met the SLO at every rate measured"
    return ""


def capacity_summary(df: pd.DataFrame, files: Mapping[tuple[str, str], Mapping[str, Any]], *,
                     reference: str | None, base: str = "base",
                     cost_per_gpu_hour_usd: float | None = None,
                     slo: Mapping[str, float] | None = None, percentile: float = 90.0,
                     confidence: float = 0.95) -> pd.DataFrame:
    """One row per variant x workload with capacity rows (pure; :func:`capacity_table` reads
    the files).

    Args:
        df: a run's records (capacity rows: stage latency, mode ``capacity``).
        files: :func:`read_capacity_files` (bootstrap draws, censoring, the SLO used).
        reference: the variant gains are against; ``None`` or a variant without capacity
            rows: ``base``.
        base: the base variant's name.
        cost_per_gpu_hour_usd: price of a GPU-hour; None: the cost the stage recorded, if any.
        slo, percentile: the study's SLO limits (ms), used for the statement when no raw file
            names the limits it was computed with.
        confidence: of the gain interval.

    Returns:
        :data:`CAPACITY_COLUMNS`: capacity in req/s and req/s per GPU with their intervals,
        ``censored`` (``none``; ``above``: at least the top rate measured, the value is that
        rate; ``below``: below the lowest rate, NaN; ``unjudged``: the lowest rate met the SLO
        in trials too short to judge the flow, NaN, status ``invalid``) and how it was read
        (``capacity_note``); ``gain_pct`` = (variant / reference - 1) x 100 with its interval
        from the index-paired draws (:func:`capacity_gain`) and ``gain_note`` when censoring
        makes it a bound; output tokens/s per GPU at capacity, ``cost_usd_per_m_tokens``
        (:func:`cost_per_million_tokens`, interval from the tokens/s interval), energy per
        output token at the highest rate that met the SLO (``energy_note`` says why it is
        missing), the ``load`` pattern, the ``slo`` statement and ``status`` (``failed`` or
        ``unsupported`` where the sweep could not run: ``capacity_note`` says why).
    """
    cap = df[_flag(df["stage"].eq("latency")) & _flag(df["mode"].eq("capacity"))
             & df["workload"].notna().to_numpy()]
    if cap.empty:
        return pd.DataFrame(columns=CAPACITY_COLUMNS)
    have = set(cap["variant"])
    ref = reference if reference in have else base
    rows = []
    for (variant, workload), group in cap.groupby(["variant", "workload"], sort=False):
        raw = files.get((str(variant), str(workload)))
        note = _text(group, "capacity_req_s")
        loads = group["load"].dropna()
        limits = (raw or {}).get("limits") or dict(slo or {})
        pct = float((raw or {}).get("percentile", percentile))
        row = {
            "variant": variant, "scheme": group["scheme"].iloc[0], "workload": workload,
            "load": str(loads.iloc[0]) if len(loads) else "poisson",
            "input_len": _first(group, "input_len"),
            "output_len": _first(group, "output_len"),
            "censored": _censored(raw, note), "capacity_note": note,
            "energy_j_per_token": _value(group, "energy_j_per_output_token", "value"),
            "slo": slo_statement(limits, pct),
            "hardware": "" if pd.isna(_first(group, "hardware")) else str(_first(group, "hardware")),
            # failed / unsupported: the sweep could not run (no valid rate point, no kernel)
            "status": next((rate_status for rate_status
                            in group.loc[group["metric"] == "capacity_req_s", "status"].dropna()
                            if rate_status != "ok"), "ok"),
        }
        for col, metric in (("req_s", "capacity_req_s"), ("req_s_per_gpu", "capacity_req_s_per_gpu"),
                            ("output_tok_s_per_gpu", "capacity_output_tok_s_per_gpu")):
            row[col] = _value(group, metric, "value")
            row[f"{col}_lo"] = _value(group, metric, "ci_low")
            row[f"{col}_hi"] = _value(group, metric, "ci_high")
        if math.isnan(row["req_s"]) and raw and raw.get("value") is not None:
            row["req_s"] = float(raw["value"])
        row["energy_note"] = ((_text(group, "energy_j_per_output_token") or "not measured")
                              if math.isnan(row["energy_j_per_token"]) else "")
        tok = row["output_tok_s_per_gpu"]
        if cost_per_gpu_hour_usd is not None and tok > 0:
            # the report's price, so the table matches the price its caption states
            row["cost_usd_per_m_tokens"] = cost_per_million_tokens(cost_per_gpu_hour_usd, tok)
            row["cost_lo"] = cost_per_million_tokens(cost_per_gpu_hour_usd,
                                                     row["output_tok_s_per_gpu_hi"])
            row["cost_hi"] = cost_per_million_tokens(cost_per_gpu_hour_usd,
                                                     row["output_tok_s_per_gpu_lo"])
        else:
            row["cost_usd_per_m_tokens"] = _value(group, "cost_usd_per_m_output_tokens", "value")
            row["cost_lo"] = _value(group, "cost_usd_per_m_output_tokens", "ci_low")
            row["cost_hi"] = _value(group, "cost_usd_per_m_output_tokens", "ci_high")
        rows.append(row)
    out = pd.DataFrame(rows, columns=CAPACITY_COLUMNS)
    out["reference"] = ref
    out["gain_note"] = ""
    by_key = out.set_index(["variant", "workload"])
    for label, row in out.iterrows():
        if (ref, row["workload"]) not in by_key.index:
            out.at[label, "gain_note"] = f"`{ref}` has no capacity for {row['workload']}"
            continue
        if row["variant"] == ref:
            out.at[label, "gain_note"] = "reference"
            continue
        ref_row = by_key.loc[(ref, row["workload"])]
        raw_v = files.get((str(row["variant"]), str(row["workload"]))) or {}
        raw_r = files.get((str(ref), str(row["workload"]))) or {}
        gain, lo, hi = capacity_gain(row["req_s"], float(ref_row["req_s"]), raw_v.get("draws"),
                                     raw_r.get("draws"), confidence=confidence)
        why = _gain_note(row["censored"], ref_row["censored"], ref)
        if row["censored"] == "above" and ref_row["censored"] == "above":
            gain = lo = hi = math.nan
        elif math.isnan(gain):
            why = why or next((f"no capacity: {side} not established (no rate judged "
                               "sustained)" for side, c in (("this variant's", row["censored"]),
                                                            (f"`{ref}`'s", ref_row["censored"]))
                               if c == "unjudged"), "no capacity: below the lowest rate measured")
        elif math.isnan(lo):
            why = "; ".join(part for part in (why, "no paired bootstrap draws: no interval") if part)
        out.loc[label, ["gain_pct", "gain_lo", "gain_hi"]] = [gain, lo, hi]
        out.at[label, "gain_note"] = why
    return out


def capacity_table(records: pd.DataFrame, run_path: str | os.PathLike[str] | None,
                   reference: str | None, cost_per_gpu_hour_usd: float | None, *,
                   base: str = "base", slo: Mapping[str, float] | None = None,
                   percentile: float = 90.0) -> pd.DataFrame:
    """:func:`capacity_summary` of a run: its records and the raw capacity files under
    ``run_path`` (:func:`read_capacity_files`). Empty (with the columns) when the run measured
    no rate sweep."""
    return capacity_summary(records, read_capacity_files(run_path), reference=reference,
                            base=base, cost_per_gpu_hour_usd=cost_per_gpu_hour_usd, slo=slo,
                            percentile=percentile)
