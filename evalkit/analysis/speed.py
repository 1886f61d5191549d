"""Latency points of the headline: one point's figures per variant, speed gains against a
reference, the Pareto frontier, the joined quality x speed table and the default point.

Concurrency points only: a rate-sweep point's concurrency is a client cap that the sweep's
throughput point shares (:func:`evalkit.analysis.capacity.rate_rows`), so it is left out
here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalkit.analysis.capacity import rate_rows
from evalkit.analysis.quality import quality_per_variant
from evalkit.core.records import ok_rows
from evalkit.metrics import points as pts

LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")


def headline_table(df: pd.DataFrame, *, workload: str, concurrency: int, stat: str = "p50",
                  mode: str = "server") -> pd.DataFrame:
    """Per variant, TTFT/TPOT/ITL/E2E at one workload and concurrency (one stat)."""
    df = df[~rate_rows(df).to_numpy()]
    lat = df[(df["stage"] == "latency") & (df["mode"] == mode) & (df["workload"] == workload)
             & (df["concurrency"] == concurrency) & (df["stat"] == stat)
             & (df["metric"].isin(LATENCY_METRICS))]
    lat = ok_rows(lat)
    if lat.empty:
        return pd.DataFrame(columns=["variant", *LATENCY_METRICS])
    wide = lat.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    return wide.reset_index()


def headline_gains(point: pd.DataFrame, reference: str, metrics: tuple[str, ...] = ("ttft_ms", "tpot_ms")
          ) -> pd.DataFrame:
    """Speed gain of every variant over ``reference`` in %: (ref - variant) / ref x 100."""
    out = point[["variant"]].copy()
    ref = point[point["variant"] == reference]
    for m in metrics:
        col = f"{m.removesuffix('_ms')}_gain_vs_{reference}_pct"
        if ref.empty or m not in point:
            out[col] = np.nan
            continue
        r = float(ref[m].iloc[0])
        out[col] = [pts.reduction_pct(r, float(x)) for x in point[m]]
    return out


def pareto_frontier(points: pd.DataFrame, *, x: str, y: str, x_higher_better: bool = True,
                    y_higher_better: bool = True) -> pd.Series:
    """Boolean mask of points not dominated by any other (both axes at least as good, one better).

    Rows with NaN in x or y are never on the frontier.
    """
    xs = points[x].to_numpy(float) * (1 if x_higher_better else -1)
    ys = points[y].to_numpy(float) * (1 if y_higher_better else -1)
    mask = []
    for i in range(len(points)):
        if math.isnan(xs[i]) or math.isnan(ys[i]):
            mask.append(False)
            continue
        dominated = any(
            j != i and not (math.isnan(xs[j]) or math.isnan(ys[j]))
            and xs[j] >= xs[i] and ys[j] >= ys[i] and (xs[j] > xs[i] or ys[j] > ys[i])
            for j in range(len(points))
        )
        mask.append(not dominated)
    return pd.Series(mask, index=points.index, name="pareto")


def quality_speed(df: pd.DataFrame, *, workload: str, concurrency: int,
                  reference: str | None = None, base: str = "base",
                  mode: str = "server") -> pd.DataFrame:
    """The joined table behind the headline and the Pareto plot: one row per variant."""
    point = headline_table(df, workload=workload, concurrency=concurrency, mode=mode)
    variants = pd.DataFrame({"variant": pd.unique(df["variant"].dropna())})
    schemes = df.drop_duplicates("variant").set_index("variant")["scheme"]
    variants["scheme"] = [schemes.get(v) for v in variants["variant"]]
    out = variants.merge(point, on="variant", how="left")
    out = out.merge(quality_per_variant(df), on="variant", how="left")
    for ref in [base] + ([reference] if reference and reference != base else []):
        if not point.empty:
            out = out.merge(headline_gains(point, ref), on="variant", how="left")
    status = latency_status(df)
    points = df[~rate_rows(df).to_numpy()]
    bad = points[(points["stage"] == "latency") & (points["mode"] == mode)
                 & (points["workload"] == workload) & (points["concurrency"] == concurrency)
                 & (points["status"] == "invalid")]
    bad_at = dict(zip(bad["variant"], bad["note"], strict=False))
    out["latency_status"] = [
        ("invalid here: " + str(bad_at[v]).split(";")[0].removeprefix("INVALID: "))
        if v in bad_at and status.get(v) == "ok" else status.get(v, "not measured")
        for v in out["variant"]]
    if "quality_delta" in out:
        out.loc[out["variant"] == base, ["quality_delta", "quality_ci_low", "quality_ci_high"]] = 0.0
    return out


def latency_status(df: pd.DataFrame) -> dict[str, str]:
    """Per variant: 'ok', or the reason latency was not measured (first non-ok note)."""
    lat = df[df["stage"] == "latency"]
    out: dict[str, str] = {}
    for variant, g in lat.groupby("variant", sort=False):
        g = g[g["mode"].isin(["server", "offline"])]  # not startup or roofline rows
        if g.empty:
            out[variant] = "not measured"
            continue
        bad = g[g["status"] != "ok"]
        if len(bad) and (g["status"] == "ok").sum() == 0:
            out[variant] = f"{bad['status'].iloc[0]}: {bad['note'].iloc[0]}"
        else:
            out[variant] = "ok"
    return out



def default_point(df: pd.DataFrame, workload: str | None, concurrency: int | None
                  ) -> tuple[str | None, int | None, str]:
    """The headline workload, concurrency and mode: server points as configured (else the
    first workload and its highest concurrency); a run without valid server points falls
    back to its offline batches (the configured workload, its largest batch)."""
    df = df[~rate_rows(df).to_numpy()]
    lat = ok_rows(df[(df["stage"] == "latency") & df["workload"].notna()
                 & df["metric"].isin(LATENCY_METRICS)])
    for mode in ("server", "offline"):
        m = lat[lat["mode"] == mode]
        if m.empty:
            continue
        wl = workload if workload in set(m["workload"]) else str(m["workload"].iloc[0])
        cs = m.loc[m["workload"] == wl, "concurrency"].dropna().astype(int)
        conc = concurrency if concurrency in set(cs) else (int(cs.max()) if len(cs) else None)
        return wl, conc, mode
    return workload, concurrency, "server"
