"""The serving curves: latency against load with interval bands, latency against offered
arrival rate with the SLO, throughput against latency, goodput at stated SLOs, and the
per-regime gains of a summary.

Pure functions of the tables in :mod:`evalkit.metrics.points`; each returns a matplotlib figure and
never saves or shows it. Every figure marks the points a reader should weigh differently:
invalid points (a grey cross, left out of every line), single-trial points (hollow markers)
and points measured on another host than the run's main one (square markers); rate points
also mark saturated rates (a red x: the queue grew, not sustainable).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.analysis.palette import variant_colors

INVALID_LABEL = "invalid (left out)"
SINGLE_LABEL = "single trial"
OTHER_HOST_LABEL = "other host"
SATURATED_LABEL = "saturated (not sustainable)"
METRIC_LABELS = {"ttft_ms": "TTFT p50 (ms)", "tpot_ms": "TPOT p50 (ms)",
                 "e2el_ms": "E2E latency p50 (ms)"}


def apply_style() -> None:
    """The look every evalkit figure shares (seaborn's white grid, notebook context)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def _colors(points: pd.DataFrame) -> dict[str, str]:
    """One colour per variant by its scheme, the same in every figure of every page
    (:func:`evalkit.analysis.palette.variant_colors`)."""
    return variant_colors(points)


def _disclose(ax, sub: pd.DataFrame, x: str, y: str, color: str) -> None:
    """Overlay the disclosure markers on one variant's points."""
    ok = sub[sub["status"] == "ok"]
    single = ok[ok["single_trial"]]
    if len(single):
        ax.scatter(single[x], single[y], s=70, facecolors="white", edgecolors=color, zorder=4,
                   label=SINGLE_LABEL)
    other = ok[ok["other_host"]]
    if len(other):
        ax.scatter(other[x], other[y], s=80, marker="s", facecolors="none", edgecolors=color,
                   zorder=4, label=OTHER_HOST_LABEL)


def _load_axis(ax, loads: pd.Series) -> None:
    """A log2 axis ticked at the loads measured, labelled as plain numbers."""
    ticks = sorted({int(x) for x in loads})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def _workload_panels(df: pd.DataFrame, sort_by: str, empty: str):
    """A figure with one panel per workload of ``df``, and (axis, workload, its rows sorted
    by ``sort_by``) for every panel with data (an empty panel says ``empty``)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- heavy, only when drawing

    workloads = list(pd.unique(df["workload"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.6 * len(workloads), 4.3),
                             squeeze=False)
    panels = []
    for ax, wl in zip(axes[0], workloads, strict=True):
        sub = df[df["workload"] == wl].sort_values(sort_by)
        if sub.empty:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        else:
            panels.append((ax, wl, sub))
    return fig, panels


def _dedupe_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, object] = {}
    for h, lab in zip(handles, labels, strict=True):
        seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), loc="best", fontsize=8)


#: x-axis words of a concurrency point by its load pattern (``load`` of the points table).
LOAD_AXIS = {"burst": "burst: c identical requests in flight (closed loop)",
             "closed": "closed loop: c requests in flight (lengths vary)",
             "batch": "batch size"}


def _load_xlabel(sub: pd.DataFrame, mode: str) -> str:
    """The x label of one panel: its points' load pattern(s) in words."""
    loads = list(pd.unique(sub["load"].dropna())) if "load" in sub else []
    if not loads:
        return "requests in flight" if mode == "server" else "batch size"
    return "; ".join(LOAD_AXIS.get(x, f"{x}: c in flight") for x in loads)


def plot_metric_vs_load(points: pd.DataFrame, *, metric: str = "ttft_ms", mode: str = "server"):
    """p50 of ``metric`` against concurrency (server) or batch size (offline), one line per
    variant with its band (server: the 95% bootstrap interval of the p50; offline: the range
    over iterations), one panel per workload. The x label names the points' load pattern
    (``load``: burst of identical requests or closed loop). Concurrency points only: pass
    no rate-sweep points (they are :func:`plot_rate_curves`')."""

    apply_style()
    pts = points[points["mode"] == mode]
    short = metric.removesuffix("_ms")
    colors = _colors(points)
    fig, panels = _workload_panels(pts, "concurrency", "no latency measured")
    for ax, wl, sub in panels:
        for variant, v in sub.groupby("variant", sort=False):
            c = colors[variant]
            ok = v[(v["status"] == "ok") & v[metric].notna()]
            if len(ok):  # a variant not measured here (no kernel) gets no legend entry
                ax.plot(ok["concurrency"], ok[metric], marker="o", color=c, label=str(variant))
            lo, hi = ok.get(f"{short}_lo"), ok.get(f"{short}_hi")
            if lo is not None and hi is not None and ok[[f"{short}_lo", f"{short}_hi"]].notna(
                    ).all(axis=1).any():
                ax.fill_between(ok["concurrency"], lo, hi, color=c, alpha=0.18, lw=0)
            _disclose(ax, v, "concurrency", metric, c)
            bad = v[(v["status"] == "invalid") & v[metric].notna()]
            if len(bad):
                ax.scatter(bad["concurrency"], bad[metric], marker="x", color="grey", s=50,
                           zorder=4, label=INVALID_LABEL)
        _load_axis(ax, sub["concurrency"])
        ax.set_title(f"{wl} (in {sub['input_len'].iloc[0]} / out {sub['output_len'].iloc[0]} "
                     "tokens)")
        ax.set_xlabel(_load_xlabel(sub, mode), fontsize=9)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        _dedupe_legend(ax)
    band = ("95% bootstrap interval of the p50" if mode == "server"
            else "range over timed iterations")
    name = {"ttft": "TTFT", "tpot": "TPOT", "e2el": "E2E latency"}.get(short, short.upper())
    fig.suptitle(f"{name} against load ({mode}; band: {band})", fontsize=11)
    fig.tight_layout()
    return fig


def plot_tails_vs_load(points: pd.DataFrame, *, metric: str = "ttft_ms",
                       mode: str = "server"):
    """The tails: p90 (dashed) and p99 (dotted) of ``metric`` against load, one colour per
    scheme, each with its recorded 95% interval as a band; valid points only (an invalid
    point's tail means nothing), one panel per workload."""

    apply_style()
    pts = points[(points["mode"] == mode) & (points["status"] == "ok")]
    short = metric.removesuffix("_ms")
    colors = _colors(points)
    fig, panels = _workload_panels(pts, "concurrency", "no valid point")
    for ax, wl, sub in panels:
        for variant, v in sub.groupby("variant", sort=False):
            c = colors[variant]
            for q, ls in (("p90", "--"), ("p99", ":")):
                y = v[f"{short}_{q}_ms"]
                if y.isna().all():
                    continue
                ax.plot(v["concurrency"], y, ls=ls, marker="o", ms=4, color=c,
                        label=f"{variant} {q}")
                lo, hi = v[f"{short}_{q}_lo"], v[f"{short}_{q}_hi"]
                if (lo.notna() & hi.notna()).any():
                    ax.fill_between(v["concurrency"], lo, hi, color=c, alpha=0.12, lw=0)
        _load_axis(ax, sub["concurrency"])
        ax.set_title(f"{wl} (in {sub['input_len'].iloc[0]} / out {sub['output_len'].iloc[0]} "
                     "tokens)")
        ax.set_xlabel(_load_xlabel(sub, mode), fontsize=9)
        ax.set_ylabel(f"{short.upper()} p90 / p99 (ms)")
        if ax.get_legend_handles_labels()[0]:
            _dedupe_legend(ax)
    fig.suptitle(f"{short.upper()} tails against load ({mode}; dashed p90, dotted p99; "
                 "band: 95% interval)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_rate_curves(rates: pd.DataFrame, *, metric: str = "ttft_ms",
                     slo_ms: float | None = None, percentile: float = 90.0):
    """p50 (solid) and p90 (dashed) of ``metric`` against the offered arrival rate, one colour
    per variant with the 95% bootstrap interval of each as a band, one panel per workload.

    Lines join the sustainable valid points; a saturated point (its queue grew through the
    window: latencies depend on how long the trial ran) is a red x at its p50 and p90,
    labelled; an invalid point is a grey cross. ``slo_ms`` draws the SLO limit that the
    ``percentile`` must meet as a horizontal line.

    Args:
        rates: :func:`evalkit.analysis.capacity.rate_points`.
        metric: ``ttft_ms``, ``tpot_ms`` or ``e2el_ms``.
        slo_ms: the limit on ``metric`` (None: no line).
        percentile: the percentile the limit applies to (for the line's label).
    """

    apply_style()
    short = metric.removesuffix("_ms")
    colors = _colors(rates)
    fig, panels = _workload_panels(rates, "offered_rate_req_s", "no rate sweep measured")
    for ax, wl, sub in panels:
        ys = []
        for variant, variant_rows in sub.groupby("variant", sort=False):
            color = colors[variant]
            ok = variant_rows[(variant_rows["status"] == "ok") & ~variant_rows["saturated"].astype(bool)]
            for quantile, ls in (("p50", "-"), ("p90", "--")):
                column, lo, hi = f"{short}_{quantile}_ms", f"{short}_{quantile}_lo", f"{short}_{quantile}_hi"
                if ok[column].notna().any():
                    ax.plot(ok["offered_rate_req_s"], ok[column], ls=ls, marker="o", ms=4, color=color,
                            label=f"{variant} {quantile}")
                if ok[[lo, hi]].notna().all(axis=1).any():
                    ax.fill_between(ok["offered_rate_req_s"], ok[lo], ok[hi], color=color,
                                    alpha=0.15, lw=0)
                ys += list(variant_rows[column].dropna())
            _disclose(ax, ok, "offered_rate_req_s", f"{short}_p50_ms", color)
            sat = variant_rows[variant_rows["saturated"].astype(bool) & (variant_rows["status"] == "ok")]
            for quantile, ls in (("p50", "-"), ("p90", "--")):
                if len(sat):
                    column = f"{short}_{quantile}_ms"
                    # a thin trace from the last sustainable rate says whose red x it is
                    trace = pd.concat([ok.tail(1), sat.head(1)])
                    ax.plot(trace["offered_rate_req_s"], trace[column], ls=ls, lw=0.8, alpha=0.5,
                            color=color, label="_nolegend_")
                    ax.scatter(sat["offered_rate_req_s"], sat[column], marker="x", color="red", s=60,
                               zorder=5, label=SATURATED_LABEL)
            for point in sat.itertuples():
                ax.annotate(f"{variant}: saturated",
                            (point.offered_rate_req_s, getattr(point, f"{short}_p90_ms")),
                            textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=7,
                            color="red")
            bad = variant_rows[(variant_rows["status"] == "invalid")
                               & variant_rows[f"{short}_p50_ms"].notna()]
            if len(bad):
                ax.scatter(bad["offered_rate_req_s"], bad[f"{short}_p50_ms"], marker="x",
                           color="grey", s=50, zorder=4, label=INVALID_LABEL)
        if slo_ms is not None:
            ax.axhline(slo_ms, color="black", ls=":", lw=1.2,
                       label=f"SLO: p{percentile:g} {short.upper()} ≤ {slo_ms:g} ms")
            ys.append(slo_ms)
        ys = [latency for latency in ys if latency > 0 and np.isfinite(latency)]
        if ys and max(ys) / min(ys) > 30:  # a saturated point's latency dwarfs the rest
            ax.set_yscale("log")
        loads = ", ".join(sorted({"Poisson" if load == "poisson" else str(load)
                                  for load in sub["load"].dropna()})) or "Poisson"
        ax.set_title(f"{wl} (in {sub['input_len'].iloc[0]} / out {sub['output_len'].iloc[0]} "
                     "tokens)")
        ax.set_xlabel(f"offered rate (req/s, {loads} arrivals)")
        ax.set_ylabel(f"{short.upper()} (ms)")
        _dedupe_legend(ax)
    fig.suptitle(f"{short.upper()} against offered rate (p50 solid, p90 dashed; band: 95% "
                 "bootstrap interval; steady-state window)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_throughput_vs_latency(points: pd.DataFrame, *, mode: str = "server"):
    """Output tokens/s per GPU (CPU runs: per engine) against p50 TPOT: the serving Pareto.
    One line per variant and workload, each point labelled with its concurrency; up and to
    the left is better."""
    import matplotlib.pyplot as plt

    apply_style()
    pts = points[(points["mode"] == mode) & (points["status"] == "ok")]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    y = "output_tok_s_per_gpu" if pts["output_tok_s_per_gpu"].notna().any() else \
        "output_throughput_tok_s"
    if pts.empty:
        ax.text(0.5, 0.5, "no valid latency point", ha="center", va="center",
                transform=ax.transAxes)
    markers = ["o", "^", "D", "v", "P"]
    wls = list(pd.unique(pts["workload"]))
    colors = _colors(points)
    for (variant, wl), g in pts.groupby(["variant", "workload"], sort=False):
        g = g.sort_values("concurrency")
        c = colors[variant]
        ax.plot(g["tpot_ms"], g[y], marker=markers[wls.index(wl) % len(markers)], color=c,
                label=f"{variant} · {wl}")
        for r in g.itertuples():
            ax.annotate(f"{'c' if mode == 'server' else 'b'}{r.concurrency}",
                        (r.tpot_ms, getattr(r, y)), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=c)
        _disclose(ax, g, "tpot_ms", y, c)
    ax.set_xlabel("TPOT p50 (ms; left is faster per user)")
    ax.set_ylabel("output tokens/s per GPU" if y == "output_tok_s_per_gpu"
                  else "output tokens/s (one engine)")
    ax.set_title(f"Throughput against latency ({mode})")
    _dedupe_legend(ax)
    fig.tight_layout()
    return fig


def plot_goodput(good: pd.DataFrame, slo: dict[str, float]):
    """Goodput (requests/s meeting every SLO) against requests in flight, per workload."""
    import matplotlib.pyplot as plt

    apply_style()
    workloads = list(pd.unique(good["workload"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.6 * len(workloads), 4.3),
                             squeeze=False)
    ok = good[good["status"] == "ok"]
    colors = _colors(good)
    for ax, wl in zip(axes[0], workloads, strict=True):
        sub = ok[ok["workload"] == wl].sort_values("concurrency")
        if sub.empty:
            ax.text(0.5, 0.5, "no valid server point with per-request data", ha="center",
                    va="center", transform=ax.transAxes)
        for variant, v in sub.groupby("variant", sort=False):
            if v["goodput_req_s"].isna().all():
                continue
            line, = ax.plot(v["concurrency"], v["goodput_req_s"], marker="o", label=str(variant),
                            color=colors.get(str(variant)))
            ax.plot(v["concurrency"], v["request_throughput_req_s"], ls=":", lw=1,
                    color=line.get_color(), label=f"{variant} (all requests)")
        if len(sub):
            _load_axis(ax, sub["concurrency"])
        ax.set_title(wl)
        ax.set_xlabel("requests in flight")
        ax.set_ylabel("requests/s")
        if len(sub):
            _dedupe_legend(ax)
    limits = ", ".join(f"{k.removesuffix('_ms').upper()} ≤ {v:g} ms" for k, v in slo.items())
    fig.suptitle(f"Goodput at the SLO {limits} (solid) and all completed requests (dotted)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def plot_regime_gains(rows: pd.DataFrame):
    """Summary forest plot: per comparison and regime, the range of the variant's TTFT and
    TPOT reduction over valid points (bar: min to max of the point estimates; dot: median).

    ``rows``: comparison, regime, metric, gains (list of point gains, %).
    """
    import matplotlib.pyplot as plt

    apply_style()
    labels = list(dict.fromkeys(zip(rows["comparison"], rows["regime"], strict=True)))
    fig, ax = plt.subplots(figsize=(9, 0.42 * max(len(labels), 3) + 1.6))
    offsets = {"ttft_ms": -0.15, "tpot_ms": 0.15}
    i_first = [True]
    # greys, not a scheme's colour: the bars are metrics of a comparison, not schemes
    colors = {"ttft_ms": "#333333", "tpot_ms": "#9a9a9a"}
    for metric, off in offsets.items():
        first = True
        for i, key in enumerate(labels):
            g = rows[(rows["comparison"] == key[0]) & (rows["regime"] == key[1])
                     & (rows["metric"] == metric)]
            vals = [x for gs in g["gains"] for x in gs]
            if not vals:
                continue
            if "ci_low" in g and g["ci_low"].notna().any():
                ax.plot([float(g["ci_low"].min()), float(g["ci_high"].max())], [i + off] * 2,
                        color=colors[metric], lw=1, label="95% intervals (span)"
                        if i_first[0] else "_nolegend_")
                i_first[0] = False
            ax.plot([min(vals), max(vals)], [i + off] * 2, color=colors[metric], lw=3,
                    alpha=0.6, label=f"{metric.removesuffix('_ms').upper()} reduction"
                    if first else "_nolegend_")
            ax.scatter([float(np.median(vals))], [i + off], color=colors[metric], zorder=3,
                       s=25, label="_nolegend_")
            first = False
    ax.axvline(0, color="black", lw=0.8, label="_nolegend_")
    gains = [x for gs in rows["gains"] for x in gs]
    if gains:  # a sane axis: the point gains with a margin; a wider interval runs off it
        lo, hi = min(min(gains), 0.0) - 25, max(max(gains), 0.0) + 25
        ax.set_xlim(max(lo, float(rows["ci_low"].min()) - 5 if "ci_low" in rows and
                        rows["ci_low"].notna().any() else lo), hi)
    ax.set_yticks(range(len(labels)), [f"{r} · {c}" for c, r in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("variant's latency reduction vs reference (%; > 0 = faster, < 0 = slower; "
                  "bar: range over deciding points, dot: median, thin line: their intervals)")
    ax.set_title("Speed gain by workload regime")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
