"""A server point's records derived from its raw files: the client's per-request results of
every trial and the point's summary (steady-state window settings, energy, the server's
``/metrics`` delta, JIT compilations logged). The measurement and ``evalkit rebuild`` both
go through :func:`server_point_records`, so a rebuilt point is the measured point.

A rate point (requests arriving at a rate) is summarised over each trial's steady-state
window (:func:`evalkit.metrics.traffic.steady_window`); its flow (arrivals vs completions,
saturation) is judged in the same window. Closed-loop points use every request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalkit.metrics import traffic as tr
from evalkit.metrics.latency import (
    interval_rows,
    per_request_metrics,
    point_rows,
    pool_metrics,
    request_latencies,
    server_metric_rows,
    tpot_s,
    window_detail,
)

#: Metrics whose per-request window values feed capacity at an SLO.
SLO_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")


@dataclass(frozen=True)
class PointData:
    """What a server point's records say, with the window samples capacity needs."""

    rows: list[dict[str, Any]]
    saturated: bool
    reason: str
    #: metric -> per-trial window values in ms (+inf for failed requests)
    samples: dict[str, list[np.ndarray]]
    completed: int
    failed: int
    min_prompt_len: int | None
    #: mean output tokens of the completed requests used (the window's, for a rate point)
    mean_output_tokens: float
    #: a rate point: every trial lasted long enough to judge its flow (always True otherwise)
    flow_judged: bool = True


def _slo_samples(detail: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-request TTFT/TPOT/E2E in ms of one (windowed) trial, +inf where a request failed."""
    errors = list(detail.get("errors") or [])
    ok = [not e for e in errors]
    ttft_s = [t if t is not None else math.nan for t in detail.get("ttfts") or []]
    lat_s = request_latencies(detail)
    outs = detail.get("output_lens") or [0] * len(errors)
    tpot = [tpot_s(x, t, o) * 1e3 for x, t, o in zip(lat_s, ttft_s, outs, strict=True)]
    return {"ttft_ms": tr.slo_values(np.asarray(ttft_s, dtype=float) * 1e3, ok),
            "tpot_ms": tr.slo_values(tpot, ok),
            "e2el_ms": tr.slo_values(np.asarray(lat_s, dtype=float) * 1e3, ok)}


def steady_trial(detail: Mapping[str, Any], window: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], tr.Window]:
    """One trial of a rate point restricted to its steady-state window: the client's result
    over the window's requests (:func:`window_detail`) and the window, from the point
    summary's ``window`` settings (warm-up and cool-down %, by requests or time)."""
    steady = tr.steady_window(detail["start_times"], warmup_pct=window["warmup_pct"],
                              cooldown_pct=window["cooldown_pct"], by=window["by"])
    return window_detail(detail, steady.mask), steady


def server_point_records(details: Sequence[Mapping[str, Any]], fields: Mapping[str, Any], *,
                         summary: Mapping[str, Any], seed: int) -> PointData:
    """Record rows of one server point from its trials' client results.

    Args:
        details: the client's ``--save-detailed`` results, one per trial.
        fields: the point's record columns (mode, load, workload, concurrency, ...).
        summary: the point's summary: ``window`` (warmup_pct, cooldown_pct, by) for a rate
            point, ``energy`` (per trial: joules, seconds, note), ``server_metrics`` (the
            ``/metrics`` delta), ``offered_rate`` (req/s).
        seed: bootstrap seed of the intervals.
    """
    window = summary.get("window")
    rate = not math.isinf(float(fields.get("request_rate", math.inf)))
    used, windows, flows = [], [], []
    for detail in details:
        if rate and window and detail.get("start_times"):
            steady_detail, steady = steady_trial(detail, window)
            latencies = request_latencies(detail)
            ok = [not error for error in detail.get("errors") or []]
            offered = float(summary.get("offered_rate", fields["request_rate"]))
            flows.append(tr.flow(detail["start_times"], latencies, detail.get("ttfts") or [], ok,
                                 steady, offered_rate=offered,
                                 max_in_flight=_client_cap(fields)))
            windows.append(steady)
            used.append(steady_detail)
        else:
            used.append(dict(detail))
    per_trial = [per_request_metrics(detail) for detail in used]
    pooled = pool_metrics(per_trial)
    rows = point_rows(pooled, **fields) + interval_rows(pooled, seed=seed, **fields)
    saturated = any(flow.saturated for flow in flows)
    reason = next((flow.reason for flow in flows if flow.saturated), "")
    samples: dict[str, list[np.ndarray]] = {metric: [] for metric in SLO_METRICS}
    for detail in used:
        for metric, values in _slo_samples(detail).items():
            samples[metric].append(values)
    if rate:
        rows += _rate_rows(summary, fields, windows, flows, saturated, reason)
        rows += _goodput_rows(summary.get("slo") or {}, samples, flows, fields)
    rows += _energy_rows(summary.get("energy") or [], fields, details)
    delta = summary.get("server_metrics")
    if delta:
        srows = server_metric_rows(delta, **{**fields, "mode": "server-metrics"})
        for row in srows:
            row["backend"] = "vllm-server"
        rows += srows
    lens = [int(length) for detail in used
            for length, error in zip(detail.get("input_lens") or [],
                                     detail.get("errors") or [], strict=False)
            if length and not error]
    mean_out = (pooled["output_tokens"] / pooled["completed"] if pooled["completed"]
                else math.nan)
    return PointData(rows, saturated, reason, samples, pooled["completed"], pooled["failed"],
                     min(lens) if lens else None, mean_out,
                     flow_judged=all(flow.flow_judged for flow in flows))


def _client_cap(fields: Mapping[str, Any]) -> int | None:
    """The client's cap on requests in flight at a point: its concurrency (vLLM's
    ``--max-concurrency``), None when unset."""
    c = fields.get("concurrency")
    return int(c) if c is not None and math.isfinite(float(c)) and float(c) > 0 else None


def _rate_rows(summary: Mapping[str, Any], fields: Mapping[str, Any], windows: list[Any],
               flows: list[Any], saturated: bool, reason: str) -> list[dict[str, Any]]:
    def mean(xs: list[float]) -> float:
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return float(np.mean(xs)) if xs else math.nan

    n_win = sum(w.n for w in windows)
    judged = all(f.flow_judged for f in flows)
    how = "; ".join(f"trial {i}: {w.how}" for i, w in enumerate(windows))[:900]
    return [
        dict(metric="offered_rate_req_s", stat="value", unit="req/s", higher_is_better=True,
             value=float(summary.get("offered_rate", fields["request_rate"])), **fields,
             note=f"arrivals requested from vLLM's client (burstiness "
                  f"{summary.get('burstiness', 1.0):g})"),
        dict(metric="arrival_rate_req_s", stat="value", unit="req/s", higher_is_better=True,
             value=mean([f.arrival_rate_req_s for f in flows]), n=n_win, **fields,
             note="requests sent in the window / its sending span (mean over trials)"),
        dict(metric="achieved_rate_req_s", stat="value", unit="req/s", higher_is_better=True,
             value=mean([f.achieved_rate_req_s for f in flows]), n=n_win, **fields,
             note="completions inside the window's sending span once the server filled "
                  "(the trial's first send + the window's longest E2E) / that span, mean over "
                  "trials" + ("" if judged else
                              "; a trial too short for that: the whole span, not judged")),
        dict(metric="saturated", stat="value", unit="bool", higher_is_better=False,
             value=1.0 if saturated else 0.0, n=len(flows), **fields,
             note=reason or ("queue steady through the window" if judged else
                             "no TTFT growth, failures or client wait; the achieved rate "
                             "not judged: a trial shorter than its fill, so this rate "
                             "cannot count as sustained")),
        dict(metric="flow_judged", stat="value", unit="bool", higher_is_better=True,
             value=1.0 if judged else 0.0, n=len(flows), **fields,
             note="every trial long enough to test the achieved rate after the server's fill"
                  if judged else "a trial shorter than the server's fill plus "
                  f"{tr.FLOW_MIN_ARRIVALS} arrivals: the achieved rate was not tested"),
        dict(metric="window_requests", stat="value", unit="count", higher_is_better=True,
             value=float(n_win), n=n_win, **fields, note=how or None),
    ]


def _goodput_rows(slo: Mapping[str, float], samples: Mapping[str, list[np.ndarray]],
                  flows: list[Any], fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Goodput of a rate point: the share of its window requests meeting every SLO limit
    (failed ones never do; an undefined TPOT of a 1-token output does not count against it)
    x the window's achieved rate, per trial, averaged."""
    limits = {k: float(v) for k, v in slo.items() if k in SLO_METRICS}
    if not limits or not flows:
        return []
    vals, shares = [], []
    for t, f in enumerate(flows):
        n = len(samples["ttft_ms"][t]) if samples["ttft_ms"] else 0
        if not n:
            continue
        good = np.ones(n, dtype=bool)
        for m, lim in limits.items():
            x = samples[m][t]
            good &= ~(x > lim) & ~(np.isnan(x) & (m != "tpot_ms"))
        shares.append(float(good.mean()))
        vals.append(shares[-1] * f.achieved_rate_req_s)
    text = ", ".join(f"{m.removesuffix('_ms').upper()} <= {v:g} ms" for m, v in limits.items())
    return [
        dict(metric="slo_attainment", stat="value", unit="fraction", higher_is_better=True,
             value=float(np.mean(shares)) if shares else math.nan, **fields,
             note=f"window requests meeting {text} (failed ones do not)"),
        dict(metric="goodput_req_s", stat="value", unit="req/s", higher_is_better=True,
             value=float(np.nanmean(vals)) if vals else math.nan, **fields,
             note=f"share meeting {text} x achieved rate (mean over trials)"),
    ]


def _energy_rows(energy: Sequence[Mapping[str, Any]], fields: Mapping[str, Any],
                 details: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """J per output token over whole trials (the energy counter covers the trial, so its
    tokens are every completed request's, not only the window's) and mean board power."""
    joules = [float(e.get("joules", math.nan)) for e in energy]
    secs = [float(e.get("seconds", math.nan)) for e in energy]
    note = str(energy[0].get("note", "")) if energy else "not measured"
    tokens = sum(int(sum(o for o, e in zip(d.get("output_lens") or [], d.get("errors") or [],
                                           strict=False) if not e)) for d in details)
    measured = bool(joules) and all(math.isfinite(j) for j in joules)
    jpt = sum(joules) / tokens if measured and tokens else math.nan
    watts = sum(joules) / sum(secs) if measured and sum(secs) > 0 else math.nan
    return [
        dict(metric="energy_j_per_output_token", stat="value", unit="J/token",
             higher_is_better=False, value=jpt, n=tokens, **fields,
             note=note if not measured else f"{sum(joules):.4g} J over {len(joules)} "
                  f"trial(s) / {tokens} output tokens ({note})"),
        dict(metric="power_w", stat="mean", unit="W", higher_is_better=False, value=watts,
             n=len(joules), **fields, note=note if not measured else "board energy / trial time"),
    ]
