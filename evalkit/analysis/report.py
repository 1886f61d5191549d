"""Join quality and speed: tables, figures and claim checks from tidy records.

Everything here is a pure function of a records DataFrame (plus the study config for
names and claims); figures are returned, never saved or shown here.

Definitions used throughout (stated in every caption):

* TTFT/TPOT are vLLM's: TTFT per request; TPOT = (E2E latency - TTFT) / (output tokens - 1).
  The headline uses the median (p50) over requests of one workload at one concurrency.
* gain vs X (%) = (metric_X - metric_variant) / metric_X x 100: positive means faster than X.
* quality delta = variant score - base score on the same documents (paired), in points of the
  task's primary metric; its 95% interval is a paired bootstrap over documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evalkit.analysis.plots import _style
from evalkit.metrics import points as pts

#: preferred metric per task, in order; the first one present is the task's primary metric.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "word_perplexity")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")


# ------------------------------------------------------------------------------ selection


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].fillna("ok") == "ok"]


def primary_metric(df: pd.DataFrame, task: str) -> str | None:
    """The task's headline metric: the first of PRIMARY_METRICS present in its records."""
    have = set(df.loc[(df["stage"] == "accuracy") & (df["task"] == task), "metric"])
    for m in PRIMARY_METRICS:
        if m in have:
            return m
    return sorted(have)[0] if have else None


def accuracy_wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant x task (primary metric): value, stderr, delta, CI, p-value, n."""
    acc = _ok(df[df["stage"] == "accuracy"])
    rows = []
    for task in sorted(acc["task"].dropna().unique()):
        metric = primary_metric(acc, task)
        sub = acc[(acc["task"] == task) & (acc["metric"] == metric)]
        for variant, g in sub.groupby("variant", sort=False):
            stats = dict(zip(g["stat"], g["value"], strict=False))
            n = g["n"].dropna()
            rows.append({
                "variant": variant, "scheme": g["scheme"].iloc[0], "task": task, "metric": metric,
                "backend": g["backend"].iloc[0],
                "value": stats.get("value", np.nan), "stderr": stats.get("stderr", np.nan),
                "delta": stats.get("delta", np.nan), "ci_low": stats.get("ci_low", np.nan),
                "ci_high": stats.get("ci_high", np.nan),
                "recovery_pct": stats.get("recovery_pct", np.nan),
                "p_value": stats.get("p_value", np.nan),
                "n": int(n.max()) if len(n) else None,
            })
    return pd.DataFrame(rows, columns=["variant", "scheme", "task", "metric", "backend", "value",
                                       "stderr", "delta", "ci_low", "ci_high", "recovery_pct",
                                       "p_value", "n"])


def quality_per_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks of the primary-metric delta vs base, with an approximate 95% interval.

    The per-task intervals come from independent paired bootstraps; the mean's interval
    combines them assuming independence across tasks: half-width = sqrt(sum(h_i^2)) / k.
    """
    wide = accuracy_wide(df)
    if wide.empty:
        return pd.DataFrame(columns=["variant", "quality_delta", "quality_ci_low",
                                     "quality_ci_high", "tasks", "docs"])
    rows = []
    for variant, g in wide.groupby("variant", sort=False):
        if g["delta"].isna().all():
            continue
        d = g["delta"].dropna()
        half = ((g["ci_high"] - g["ci_low"]) / 2).dropna()
        h = math.sqrt(float((half**2).sum())) / len(half) if len(half) else np.nan
        mean = float(d.mean())
        rows.append({"variant": variant, "quality_delta": mean, "quality_ci_low": mean - h,
                     "quality_ci_high": mean + h, "tasks": len(d), "docs": int(g["n"].sum())})
    return pd.DataFrame(rows, columns=["variant", "quality_delta", "quality_ci_low",
                                       "quality_ci_high", "tasks", "docs"])


def latency_point(df: pd.DataFrame, *, workload: str, concurrency: int, stat: str = "p50",
                  mode: str = "server") -> pd.DataFrame:
    """Per variant, TTFT/TPOT/ITL/E2E at one workload and concurrency (one stat)."""
    lat = df[(df["stage"] == "latency") & (df["mode"] == mode) & (df["workload"] == workload)
             & (df["concurrency"] == concurrency) & (df["stat"] == stat)
             & (df["metric"].isin(LATENCY_METRICS))]
    lat = _ok(lat)
    if lat.empty:
        return pd.DataFrame(columns=["variant", *LATENCY_METRICS])
    wide = lat.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    return wide.reset_index()


def gains(point: pd.DataFrame, reference: str, metrics: tuple[str, ...] = ("ttft_ms", "tpot_ms")
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
        out[col] = (r - point[m]) / r * 100.0 if r and not math.isnan(r) else np.nan
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
    point = latency_point(df, workload=workload, concurrency=concurrency, mode=mode)
    variants = pd.DataFrame({"variant": pd.unique(df["variant"].dropna())})
    schemes = df.drop_duplicates("variant").set_index("variant")["scheme"]
    variants["scheme"] = [schemes.get(v) for v in variants["variant"]]
    out = variants.merge(point, on="variant", how="left")
    out = out.merge(quality_per_variant(df), on="variant", how="left")
    for ref in [base] + ([reference] if reference and reference != base else []):
        if not point.empty:
            out = out.merge(gains(point, ref), on="variant", how="left")
    status = latency_status(df)
    bad = df[(df["stage"] == "latency") & (df["mode"] == mode) & (df["workload"] == workload)
             & (df["concurrency"] == concurrency) & (df["status"] == "invalid")]
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


# ------------------------------------------------------------------------------ claims


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


def claim_check(df: pd.DataFrame, claims: list[Any] | tuple[Any, ...], *, hardware: str,
                stat: str = "p50", samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Claimed vs measured reduction, with its interval, per claim, point and metric.

    Args:
        df: records.
        claims: ``evalkit.core.config.Claim`` objects.
        hardware: label of the device the run measured on (records' hardware column).
        stat: the statistic compared (p50: median over requests; offline points have one
            value per iteration, and their p50 is over iterations).
        samples: per-request values (:func:`evalkit.stages.latency.request_samples`: variant,
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
    q = float(stat[1:]) if stat.startswith("p") else 50.0
    lat_all = df[(df["stage"] == "latency") & (df["mode"].isin(["server", "offline"]))
                 & (df["stat"] == stat)]
    is_hopper = any(k in hardware for k in ("H100", "H200", "H800", "GH200"))
    for c in claims:
        applies = c.hardware == "any" or (c.hardware == "hopper") == is_hopper
        for metric, claimed in (("ttft_ms", c.ttft_reduction_pct), ("tpot_ms", c.tpot_reduction_pct)):
            if claimed is None:
                continue
            sub = lat_all[(lat_all["metric"] == metric)
                          & lat_all["variant"].isin([c.variant, c.reference])]
            keys = sub[["mode", "workload", "concurrency", "input_len", "output_len"]
                       ].drop_duplicates().sort_values(["mode", "workload", "concurrency"],
                                                        ascending=[False, True, True])
            if keys.empty:
                rows.append({"claim": c.name, "metric": metric, "claimed_pct": claimed,
                             "measured_pct": np.nan, "verdict": "not measured",
                             "applies": applies})
                continue
            for _, k in keys.iterrows():
                at = sub[(sub["mode"] == k["mode"]) & (sub["workload"] == k["workload"])
                         & (sub["concurrency"] == k["concurrency"])]
                v_row = at[at["variant"] == c.variant]
                r_row = at[at["variant"] == c.reference]
                bad = at[at["status"] == "invalid"]
                ok_v = v_row[v_row["status"] == "ok"]["value"]
                ok_r = r_row[r_row["status"] == "ok"]["value"]
                measured = (float((ok_r.iloc[0] - ok_v.iloc[0]) / ok_r.iloc[0] * 100)
                            if len(ok_v) and len(ok_r) and ok_r.iloc[0] else np.nan)
                tried = False
                lo = hi = np.nan
                if not math.isnan(measured):
                    conc = int(k["concurrency"])
                    tried = True
                    lo, hi = pts.reduction_interval(
                        pts.samples_at(samples, c.reference, k["mode"], k["workload"], conc, metric),
                        pts.samples_at(samples, c.variant, k["mode"], k["workload"], conc, metric),
                        mode=k["mode"], q=q)
                if len(bad):
                    verdict = "invalid"
                elif math.isnan(measured):
                    verdict = "not measured"
                else:
                    verdict = claim_verdict(lo, hi, claimed, c.tolerance_pct)
                rows.append({
                    "claim": c.name, "metric": metric, "mode": k["mode"],
                    "workload": k["workload"],
                    "input_len": k["input_len"], "output_len": k["output_len"],
                    "concurrency": int(k["concurrency"]),
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
        elif n.get("holds", 0) + n.get("partly", 0) > 0:
            verdict = "partly"
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


# ------------------------------------------------------------------------------ figures


def plot_quality_vs_speed(table: pd.DataFrame, *, gain_col: str, caption: str = ""):
    """Quality delta (with CI) against a speed gain column; Pareto frontier drawn."""
    import matplotlib.pyplot as plt

    _style()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    t = table.dropna(subset=[gain_col, "quality_delta"]).reset_index(drop=True)
    if t.empty:
        ax.text(0.5, 0.5, "no variant has both quality and latency measured",
                ha="center", va="center", transform=ax.transAxes)
    else:
        front = pareto_frontier(t, x=gain_col, y="quality_delta")
        yerr = np.vstack([t["quality_delta"] - t["quality_ci_low"],
                          t["quality_ci_high"] - t["quality_delta"]]).clip(min=0)
        ax.errorbar(t[gain_col], t["quality_delta"] * 100, yerr=yerr * 100, fmt="none",
                    ecolor="grey", capsize=3, lw=1)
        ax.scatter(t[gain_col], t["quality_delta"] * 100, s=60,
                   c=["tab:red" if f else "tab:blue" for f in front], zorder=3)
        for _, r in t.iterrows():
            ax.annotate(r["variant"], (r[gain_col], r["quality_delta"] * 100),
                        textcoords="offset points", xytext=(6, 4), fontsize=9)
        pf = t[front].sort_values(gain_col)
        ax.plot(pf[gain_col], pf["quality_delta"] * 100, "--", color="tab:red", lw=1,
                label="Pareto frontier")
        ax.legend(loc="best")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{gain_col.replace('_pct', '')} (%; > 0 = faster)")
    ax.set_ylabel("quality delta vs base (points, mean over tasks, 95% CI)")
    ax.set_title("Quality vs speed")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def gain_label(col: str) -> str:
    """Readable label of a gain column: ``ttft_gain_vs_w4a16_pct`` -> ``TTFT gain vs w4a16 (%)``."""
    metric, _, ref = col.removesuffix("_pct").partition("_gain_vs_")
    return f"{metric.upper()} gain vs {ref} (%)" if ref else col


def plot_speed_gains(table: pd.DataFrame, *, gain_cols: list[str], caption: str = ""):
    """Speed gains per variant (bars), for studies without quality (e.g. random weights)."""
    import matplotlib.pyplot as plt

    _style()
    cols = [c for c in gain_cols if c in table]
    t = table.set_index("variant")[cols] if cols else pd.DataFrame()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * max(len(t), 3) + 1.2))
    if t.empty or t.isna().all().all():
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
    else:
        # labels travel with the bars (legend(list) would relabel in artist order and give
        # the first label to whatever was drawn first)
        t.rename(columns=gain_label).plot.barh(ax=ax)
        ax.axvline(0, color="black", lw=0.8, label="_nolegend_")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("gain (%; > 0 = faster than the reference)")
    ax.set_title("Speed gains (quality not measured)")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_latency_curves(df: pd.DataFrame, *, metric: str = "tpot_ms", stat: str = "p50",
                        mode: str = "server", caption: str = ""):
    """Latency vs concurrency, one line per variant, one panel per workload."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    _style()
    lat = _ok(df[(df["stage"] == "latency") & (df["mode"] == mode) & (df["metric"] == metric)
                 & (df["stat"] == stat)]).copy()
    workloads = list(pd.unique(lat["workload"].dropna())) or ["(none)"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads, strict=False):
        sub = lat[lat["workload"] == wl]
        if sub.empty:
            ax.text(0.5, 0.5, "no latency measured", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            sub = sub.assign(concurrency=sub["concurrency"].astype(int))
            sns.lineplot(data=sub, x="concurrency", y="value", hue="variant", marker="o", ax=ax)
            ax.set_xscale("log", base=2)
            il, ol = sub["input_len"].iloc[0], sub["output_len"].iloc[0]
            ax.set_title(f"{wl} (in {il} / out {ol} tokens)")
        ax.set_xlabel("concurrency (max in-flight requests)")
        ax.set_ylabel(f"{metric} ({stat} over requests)")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_accuracy_deltas(df: pd.DataFrame, *, caption: str = ""):
    """Per task, each variant's delta vs base with its paired-bootstrap 95% interval."""
    import matplotlib.pyplot as plt

    _style()
    wide = accuracy_wide(df).dropna(subset=["delta"])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(wide), 4) + 1))
    if wide.empty:
        ax.text(0.5, 0.5, "no paired deltas (only base evaluated?)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        wide = wide.sort_values(["task", "variant"]).reset_index(drop=True)
        y = np.arange(len(wide))
        xerr = np.vstack([wide["delta"] - wide["ci_low"], wide["ci_high"] - wide["delta"]])
        colors = ["tab:red" if (h < 0) else "tab:green" if (lo > 0) else "tab:grey"
                  for lo, h in zip(wide["ci_low"], wide["ci_high"], strict=False)]
        ax.errorbar(wide["delta"] * 100, y, xerr=xerr.clip(min=0) * 100, fmt="none",
                    ecolor="grey", capsize=3)
        ax.scatter(wide["delta"] * 100, y, c=colors, zorder=3)
        ax.set_yticks(y, [f"{t} / {v} ({m})" for t, v, m in
                          zip(wide["task"], wide["variant"], wide["metric"], strict=False)])
        ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("delta vs base (points; red: significantly worse, green: better)")
    ax.set_title("Accuracy deltas with paired 95% intervals")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ report object


@dataclass
class Report:
    """Everything notebook 04 shows, computed once from a run's records."""

    records: pd.DataFrame
    study: str
    model: str
    hardware: str
    workload: str | None
    concurrency: int | None
    reference: str | None
    caveats: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    claims: tuple[Any, ...] = ()
    base: str = "base"
    #: id of the earlier run of the study this one is compared with (None: there is none).
    previous_run: str | None = None
    #: :func:`evalkit.analysis.compare.compare` of the previous run (A) with this one (B).
    changes: pd.DataFrame | None = None
    #: per-request latency values (:func:`evalkit.stages.latency.request_samples`), for intervals.
    samples: pd.DataFrame | None = None
    #: mode of the headline point: server (concurrency) or offline (batch size).
    mode: str = "server"
    #: GPUs one engine spans (0 on a CPU run), for tokens/s per GPU.
    gpus_per_engine: int = 1
    #: per-request SLO limits (ms) for goodput.
    slo: dict[str, float] = field(default_factory=dict)
    #: why the run's claims do not apply beyond its hardware (e.g. an eager GPU engine).
    claim_caveat: str | None = None
    _points: pd.DataFrame | None = field(default=None, repr=False)
    _gains: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        if self.workload is None or self.concurrency is None:
            return quality_per_variant(self.records)
        return quality_speed(self.records, workload=self.workload, concurrency=self.concurrency,
                             reference=self.reference, base=self.base, mode=self.mode)

    def points(self) -> pd.DataFrame:
        """:func:`evalkit.metrics.points.latency_points` of the run (computed once)."""
        if self._points is None:
            self._points = pts.latency_points(self.records, gpus_per_engine=self.gpus_per_engine,
                                              samples=self.samples)
        return self._points

    def comparisons(self) -> list[tuple[str, str]]:
        """(variant, reference) pairs the answer speaks of: every other variant with latency
        against the reference variant, and every quantized variant against base."""
        have = list(pd.unique(self.points()["variant"]))
        out = []
        if self.reference in have:
            out += [(v, self.reference) for v in have if v not in (self.reference, self.base)]
        if self.base in have:
            out += [(v, self.base) for v in have if v != self.base]
        return out

    def gains(self, variant: str, reference: str) -> pd.DataFrame:
        """:func:`evalkit.metrics.points.point_gains` of one comparison (bootstrapped once; the
        answer, the regime table, the summary and the index all read it)."""
        key = (variant, reference)
        if key not in self._gains:
            self._gains[key] = pts.point_gains(self.points(), self.samples, variant=variant,
                                               reference=reference)
        return self._gains[key]

    def caption(self, what: str) -> str:
        where = "concurrency" if self.mode == "server" else "offline batch size"
        point = (f"workload {self.workload} at {where} {self.concurrency}"
                 if self.workload else "no latency workload")
        return (f"{what} Model {self.model}; hardware {self.hardware}; {point}. "
                "TTFT/TPOT: vLLM definitions, p50 over requests; TPOT = (E2E - TTFT)/(out - 1). "
                "gain = (ref - variant)/ref x 100, > 0 is faster. Quality delta: paired vs base, "
                "95% paired-bootstrap CI.")

    def claims_checked(self) -> pd.DataFrame:
        checks = claim_check(self.records, list(self.claims), hardware=self.hardware,
                             samples=self.samples)
        if self.claim_caveat and len(checks):
            checks["applies"] = False
            checks["note"] = [f"{n}; {self.claim_caveat}" if isinstance(n, str) and n else
                              self.claim_caveat for n in checks.get("note", [""] * len(checks))]
        return checks


def default_point(df: pd.DataFrame, workload: str | None, concurrency: int | None
                  ) -> tuple[str | None, int | None, str]:
    """The headline workload, concurrency and mode: server points as configured (else the
    first workload and its highest concurrency); a run without valid server points falls
    back to its offline batches (the configured workload, its largest batch)."""
    lat = _ok(df[(df["stage"] == "latency") & df["workload"].notna()
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
