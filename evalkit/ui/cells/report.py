"""The cells of notebook 04 (the report): one function per cell, each returning what Jupyter
renders (and displaying what comes before it)."""

from __future__ import annotations

import pandas as pd

from evalkit.analysis import plots
from evalkit.analysis import report as rp
from evalkit.analysis.load import load_report
from evalkit.stages import accuracy as acc
from evalkit.ui import views
from evalkit.ui.cells.evaluate import plot_accuracy
from evalkit.ui.cells.stage import StageContext, open_stage
from evalkit.ui.display import collapsed, display, md, table
from evalkit.ui.figures import shown

__all__ = [
    "build_report",
    "open_stage",
    "plot_accuracy",
    "plot_load_curves",
    "plot_quality_vs_speed",
    "plot_rate_curves",
    "plot_throughput",
    "show_accuracy_detail",
    "show_answer",
    "show_changes",
    "show_claims",
    "show_context",
    "show_crosscheck",
    "show_environment",
    "show_goodput",
    "show_header",
    "show_headline",
    "show_invalid",
    "show_points",
    "show_quality_panel",
    "show_rate_points",
    "show_roofline",
]


def build_report(ctx: StageContext) -> rp.Report:
    return load_report(ctx.cfg, ctx.run)


def show_header(report: rp.Report):
    return md(views.header_markdown(report))


def show_answer(report: rp.Report):
    """The first screen: capacity at the SLO per scheme and traffic mix (runs with rate
    sweeps), a verdict over all points and a recommendation per regime."""
    display(md(views.answer_markdown(report)))
    text, t = views.regime_table(report)
    if t.empty:
        return None
    display(md(text))
    return table(t)


def show_context(report: rp.Report):
    return md(views.context_markdown(report))


def plot_rate_curves(report: rp.Report, metric: str = "ttft_ms"):
    """TTFT or TPOT against the offered arrival rate of the rate sweeps, with the SLO."""
    rates = report.rates()
    short = metric.removesuffix("_ms").upper()
    if rates.empty:
        return md(f"_no rate sweep in this run: no {short} against offered rate_")
    limit = report.slo.get(metric)
    pct = f"p{report.slo_percentile:g}"
    slo = (f"dotted line: the SLO limit on the {pct} ({limit:g} ms); " if limit is not None
           else "")
    return shown(plots.plot_rate_curves(rates, metric=metric, slo_ms=limit,
                                        percentile=report.slo_percentile),
                 f"{metric}-vs-rate",
                 f"p50 (solid) and p90 (dashed) {short} against the offered arrival rate, over "
                 "each rate's steady-state window; bands: 95% bootstrap intervals; " + slo
                 + "red x: saturated rates (the queue grew: not sustainable, left out of the "
                 "lines); grey crosses: invalid points; hollow markers: single-trial points.")


def show_rate_points(report: rp.Report):
    text, t = views.rate_table(report)
    return collapsed("Rate points: offered against achieved", text, t, "{:.3g}")


def plot_load_curves(report: rp.Report, metric: str = "ttft_ms"):
    """TTFT or TPOT against load with interval bands, server and offline points."""
    p = report.points()
    modes = [m for m in ("server", "offline") if (p["mode"] == m).any()] if len(p) else []
    if not modes:
        return md(f"_no latency points: no {metric} curve_")
    for m in modes[:-1]:
        display(_figure_of_load(p, metric, m))
    return _figure_of_load(p, metric, modes[-1])


def _figure_of_load(p: pd.DataFrame, metric: str, mode: str):
    what = "requests in flight" if mode == "server" else "offline batch size"
    return shown(plots.plot_metric_vs_load(p, metric=metric, mode=mode),
                 f"{metric}-vs-load-{mode}",
                 f"p50 {metric.removesuffix('_ms').upper()} against {what} (the axis names "
                 "the load pattern: a burst of identical requests or a closed loop); grey "
                 "crosses: invalid points (left out of the lines); hollow markers: "
                 "single-trial points; squares: points measured on another host. Rate-sweep "
                 "points are in the rate curves.")


def plot_throughput(report: rp.Report):
    p = report.points()
    if p.empty or not (p["mode"] == "server").any():
        return md("_no server points: no throughput-latency curve_")
    return shown(plots.plot_throughput_vs_latency(p), "throughput-vs-latency",
                 "Output tokens/s per GPU against p50 TPOT at each concurrency (labels: "
                 "requests in flight); up and to the left is better. Valid points only.")


def show_goodput(report: rp.Report):
    text, good = views.goodput(report)
    display(md(text))
    if good.empty:
        return None
    display(collapsed("Goodput per point", "", good.rename(columns=views.GOODPUT_LABELS),
                      "{:.3g}"))
    return shown(plots.plot_goodput(good, report.slo), "goodput",
                 "Goodput: requests/s meeting every SLO (solid), against all completed "
                 "requests/s (dotted).")


def show_points(report: rp.Report):
    text, t = views.points_table(report)
    return collapsed("All latency points", text, t, "{:.3g}")


def show_headline(report: rp.Report):
    display(md(views.headline_markdown(report)))
    return table(views.headline_table(report), "{:.2f}")


def plot_quality_vs_speed(report: rp.Report, metric: str = "ttft_ms"):
    t = report.table()
    short = metric.removesuffix("_ms")
    # a gain column without data (its reference has no latency here) gets no legend entry
    cols = [c for c in t.columns if c.startswith(f"{short}_gain_vs_") and t[c].notna().any()]
    if "quality_delta" not in t or t["quality_delta"].drop(
            t.index[t["variant"] == report.base], errors="ignore").isna().all():
        return shown(rp.plot_speed_gains(t, gain_cols=cols), f"{short}-gains",
                     report.caption(f"{short.upper()} gains; quality was not measured."))
    ref = f"{short}_gain_vs_{report.reference}_pct" if report.reference else None
    gain_col = ref if ref in cols else (cols[0] if cols else f"{short}_gain_vs_base_pct")
    if gain_col not in t:
        t = t.assign(**{gain_col: float("nan")})
    return shown(rp.plot_quality_vs_speed(t, gain_col=gain_col),
                 f"quality-vs-{short}", report.caption(f"Quality vs {short.upper()} gain."))


def show_quality_panel(report: rp.Report):
    """Per variant: accuracy delta, flips, KLD and top-1 agreement, each with its interval."""
    text, t = views.quality_panel(report)
    if not text:
        return None
    display(md(text))
    return table(t)


def show_claims(report: rp.Report):
    text, summary, detail = views.claims(report)
    display(md(text))
    if summary.empty:
        return None
    display(table(summary, "{:.1f}"))
    return collapsed("Claim check, point by point", "", detail, "{:.1f}")


def show_invalid(report: rp.Report):
    text, t = views.invalid_points(report)
    title, _, body = text.removeprefix("## ").partition("\n\n")
    return collapsed(title, body, t)


def show_crosscheck(report: rp.Report):
    text, t = views.crosscheck(report)
    title, _, body = text.removeprefix("## ").partition("\n\n")
    return collapsed(title, body, t, "{:.2f}")


def show_accuracy_detail(records: pd.DataFrame):
    """Per-task accuracy of every variant, folded (the report's appendix)."""
    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return md("_accuracy was not measured in this study_")
    return collapsed("Accuracy per task", "Every variant's score per task and metric, with "
                     "its paired delta vs base, 95% interval and McNemar p-value.",
                     acc.accuracy_table(r))


def show_roofline(report: rp.Report):
    text, t = views.roofline(report)
    display(md(text))
    return table(t, "{:.2f}")


def show_changes(report: rp.Report):
    text, t = views.changes(report)
    display(md(text))
    return None if t.empty else table(t)


def show_environment(report: rp.Report):
    return md(views.environment_markdown(report))
