"""Claim checks: a claimed latency reduction against the measured one, point by point,
with a verdict from the 95% interval of the measured reduction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from evalkit.metrics import points as pts

#: Verdicts of one claim point, in the order the summary counts them.
VERDICTS = ("holds", "partly", "not reproduced", "inconclusive", "invalid", "not measured")


def claim_verdict(ci_low: float, ci_high: float, claimed: float, tolerance_pct: float) -> str:
    """Verdict of one point from the 95% interval of its measured reduction (%).

    *holds*: the whole interval is at or above the claim minus its tolerance; *partly*: the
    whole interval is above 0 and below that; *not reproduced*: the whole interval is below
    that and reaches 0 or less (not faster, or slower); *inconclusive*: the interval
    contains the claim's threshold, so the data cannot tell (or there is no interval).
    """
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    threshold = claimed * (1 - tolerance_pct / 100.0)
    if ci_low >= threshold:
        return "holds"
    if ci_high < threshold:
        return "partly" if ci_low > 0 else "not reproduced"
    return "inconclusive"


def speed_reading_reduction(claimed_pct: float) -> float:
    """The latency reduction (%) that "``claimed_pct`` % faster" means in the speed reading
    (rate x (1 + claimed/100)): 1 - 1 / (1 + claimed/100), in percent. 58 -> 36.7."""
    if not claimed_pct > -100:
        raise ValueError(f"a speed-up of {claimed_pct} % is not a rate (must be > -100)")
    return (1.0 - 1.0 / (1.0 + claimed_pct / 100.0)) * 100.0


def claim_check(df: pd.DataFrame, claims: list[Any] | tuple[Any, ...], *, hardware: str,
                stat: str = "p50", samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Claimed vs measured reduction, with its interval, per claim, point and metric.

    Args:
        df: records.
        claims: ``evalkit.core.specs.Claim`` objects.
        hardware: label of the device the run measured on (records' hardware column).
        stat: the statistic compared (p50: median over requests; offline points have one
            value per iteration, and their p50 is over iterations).
        samples: per-request values (:func:`evalkit.stages.latency.raw.request_samples`: variant,
            mode, workload, concurrency, trial, metric, value); the interval of each
            reduction is a bootstrap of the two samples' ``stat``, widened on server points
            of several trials to contain each trial's own reduction
            (:func:`evalkit.metrics.points.reduction_interval`).
            Without samples every verdict is *inconclusive*.

    Returns:
        One row per claim x mode x workload x concurrency x metric: reference_ms,
        variant_ms, claimed_pct, measured_pct (reduction = (ref - variant) / ref x 100),
        ci_low_pct, ci_high_pct, verdict (:func:`claim_verdict`; *invalid* where a point of
        either variant failed its validity checks, with the reason in ``note``) and applies
        (whether the run's hardware is the claim's). ``mode`` is ``server`` (concurrency =
        concurrent requests) or ``offline`` (concurrency = batch size).
    """
    rows = []
    quantile = float(stat[1:]) if stat.startswith("p") else 50.0
    lat_all = df[(df["stage"] == "latency") & (df["mode"].isin(["server", "offline"]))
                 & (df["stat"] == stat)]
    is_hopper = any(gpu in hardware for gpu in ("H100", "H200", "H800", "GH200"))
    for claim in claims:
        applies = claim.hardware == "any" or (claim.hardware == "hopper") == is_hopper
        for metric, claimed in (("ttft_ms", claim.ttft_reduction_pct), ("tpot_ms", claim.tpot_reduction_pct)):
            if claimed is None:
                continue
            sub = lat_all[(lat_all["metric"] == metric)
                          & lat_all["variant"].isin([claim.variant, claim.reference])]
            keys = sub[["mode", "workload", "concurrency", "input_len", "output_len"]
                       ].drop_duplicates().sort_values(["mode", "workload", "concurrency"],
                                                        ascending=[False, True, True])
            if keys.empty:
                rows.append({"claim": claim.name, "metric": metric, "claimed_pct": claimed,
                             "measured_pct": np.nan, "verdict": "not measured",
                             "applies": applies})
                continue
            for _, point in keys.iterrows():
                at = sub[(sub["mode"] == point["mode"]) & (sub["workload"] == point["workload"])
                         & (sub["concurrency"] == point["concurrency"])]
                v_row = at[at["variant"] == claim.variant]
                r_row = at[at["variant"] == claim.reference]
                bad = at[at["status"] == "invalid"]
                ok_v = v_row[v_row["status"] == "ok"]["value"]
                ok_r = r_row[r_row["status"] == "ok"]["value"]
                measured = (float((ok_r.iloc[0] - ok_v.iloc[0]) / ok_r.iloc[0] * 100)
                            if len(ok_v) and len(ok_r) and ok_r.iloc[0] else np.nan)
                tried = False
                lo = hi = np.nan
                if not math.isnan(measured):
                    conc = int(point["concurrency"])
                    tried = True
                    lo, hi = pts.reduction_interval(
                        pts.samples_at(samples, claim.reference, point["mode"], point["workload"],
                                       conc, metric),
                        pts.samples_at(samples, claim.variant, point["mode"], point["workload"],
                                       conc, metric),
                        mode=point["mode"], q=quantile)
                if len(bad):
                    verdict = "invalid"
                elif math.isnan(measured):
                    verdict = "not measured"
                else:
                    verdict = claim_verdict(lo, hi, claimed, claim.tolerance_pct)
                rows.append({
                    "claim": claim.name, "metric": metric, "mode": point["mode"],
                    "workload": point["workload"],
                    "input_len": point["input_len"], "output_len": point["output_len"],
                    "concurrency": int(point["concurrency"]),
                    "reference_ms": float(r_row["value"].iloc[0]) if len(r_row) else np.nan,
                    "variant_ms": float(v_row["value"].iloc[0]) if len(v_row) else np.nan,
                    "claimed_pct": claimed, "measured_pct": measured,
                    "ci_low_pct": lo, "ci_high_pct": hi, "verdict": verdict,
                    "applies": applies,
                    "note": (str(bad["note"].iloc[0]).split(";")[0] if len(bad) else
                             "no per-request data for an interval" if tried and
                             math.isnan(lo) else ""),
                })
    return pd.DataFrame(rows)


def claim_summary(checks: pd.DataFrame) -> pd.DataFrame:
    """Overall verdict per claim and metric, with the count of every verdict.

    *holds* only if every valid point holds; *not reproduced* if no point holds or partly
    holds and at least one is not reproduced; *inconclusive* if no point could be decided;
    *mostly not reproduced* where fewer points hold or partly hold than are not reproduced;
    otherwise *partly*. ``counts`` lists every verdict's number of points, invalid ones
    included; ``holds_at`` the points where it holds.
    """
    cols = ["claim", "metric", "claimed_pct", "verdict", "counts", "holds_at",
            "best_measured_pct", "worst_measured_pct", "points", "applies"]
    rows = []
    if checks.empty:
        return pd.DataFrame(columns=cols)
    for (claim, metric), g in checks.groupby(["claim", "metric"], sort=False):
        measured = g[~g["verdict"].isin(["not measured", "invalid"])]
        n = measured["verdict"].value_counts()
        holds = measured[measured["verdict"] == "holds"]
        if measured.empty:
            verdict = "invalid" if (g["verdict"] == "invalid").any() else "not measured"
        elif n.get("holds", 0) == len(measured):
            verdict = "holds"
        elif n.get("holds", 0) + n.get("partly", 0) >= max(n.get("not reproduced", 0), 1):
            verdict = "partly"
        elif n.get("holds", 0) + n.get("partly", 0) > 0:
            # more points where it is not reproduced than where it (partly) holds
            verdict = "mostly not reproduced"
        elif n.get("not reproduced", 0) > 0:
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
        allc = g["verdict"].value_counts()
        counts = ", ".join(f"{allc[v]} {v}" for v in VERDICTS if allc.get(v, 0))
        # server points as workload@c<concurrency>, offline batches as workload@b<batch>
        where = ", ".join(f"{r.workload}@{'b' if r.mode == 'offline' else 'c'}{r.concurrency}"
                          for r in holds.itertuples())
        rows.append({
            "claim": claim, "metric": metric, "claimed_pct": g["claimed_pct"].iloc[0],
            "verdict": verdict, "counts": counts, "holds_at": where or "-",
            "best_measured_pct": measured["measured_pct"].max() if len(measured) else np.nan,
            "worst_measured_pct": measured["measured_pct"].min() if len(measured) else np.nan,
            "points": len(measured), "applies": bool(g["applies"].iloc[0]),
        })
    return pd.DataFrame(rows, columns=cols)
