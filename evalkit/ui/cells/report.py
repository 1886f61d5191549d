"""The cells of notebook 04 (the report): one function per cell, each returning what Jupyter
renders (and displaying what comes before it)."""

from __future__ import annotations

import pandas as pd

from evalkit.analysis import decision as dc
from evalkit.analysis import plots
from evalkit.analysis import report as rp
from evalkit.analysis import report_figures as figs
from evalkit.analysis.claim_map import (
    claim_map_summary,
    claim_maps,
    plot_claim_map,
    reduction_words,
)
from evalkit.analysis.lineage import superseded_by
from evalkit.analysis.load import RANDOM_WEIGHTS, load_report
from evalkit.analysis.verdicts import NAMES
from evalkit.stages import accuracy as acc
from evalkit.ui import sections, views
from evalkit.ui.card import card_html, export_card
from evalkit.ui.cells.evaluate import plot_accuracy
from evalkit.ui.cells.stage import StageContext, open_stage
from evalkit.ui.display import collapsed, display, html_block, md, table
from evalkit.ui.figures import shown

__all__ = [
    "build_report",
    "open_stage",
    "plot_accuracy",
    "plot_claim_maps",
    "plot_load_curves",
    "plot_quality_vs_speed",
    "plot_rate_curves",
    "plot_tails",
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
    "show_verdict",
    "show_headline",
    "show_invalid",
    "show_other_evidence",
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


def report_card(report: rp.Report) -> dc.Card:
    """The run's verdict card (:func:`evalkit.analysis.decision.build_card` of this run)."""
    after = superseded_by(report.run_path) if report.run_path is not None else None
    shape = f"{report.model} ({'real weights' if report.real_weights else RANDOM_WEIGHTS})"
    entry = dc.RunEntry(report, f"{report.study}/{report.run_path.name if report.run_path else ''}"
                        .rstrip("/"), shape, "", after[0] if after else None)
    return dc.build_card([entry], f"Verdict · {report.hardware}")


def show_verdict(report: rp.Report):
    """The first screen: the verdict card of this run (the claim in both readings, the
    scheme to use per workload with its gain and quality); also written as
    ``html/verdict.svg`` and ``html/verdict.png`` in the run directory."""
    card = report_card(report)
    if report.run_path is not None:
        export_card(card, report.run_path / "html" / "verdict")
    after = superseded_by(report.run_path) if report.run_path is not None else None
    if after:
        display(md(f"**Superseded by `{after[0]}`** ({after[1]}): this run's points decide "
                   "nothing on the cross-study page."))
    return html_block(card_html(card))


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
                 f"p50 {NAMES.get(metric, metric)} against {what} (the axis names "
                 "the load pattern: a burst of identical requests or a closed loop); grey "
                 "crosses: invalid points (left out of the lines); hollow markers: "
                 "single-trial points; squares: points measured on another host. Rate-sweep "
                 "points are in the rate curves.")


def plot_tails(report: rp.Report, metric: str = "ttft_ms"):
    """p90 and p99 of TTFT or TPOT against load, with their intervals (server points)."""
    p = report.points()
    short = metric.removesuffix("_ms")
    if p.empty or not ((p["mode"] == "server") & (p["status"] == "ok")).any() or p[
            f"{short}_p99_ms"].isna().all():
        return md(f"_no valid server point with recorded tails: no {short.upper()} p90/p99 "
                  "figure_")
    return shown(plots.plot_tails_vs_load(p, metric=metric), f"{metric}-tails",
                 f"The tails of {short.upper()}: p90 (dashed) and p99 (dotted) over the requests "
                 "of each valid server point against requests in flight, one colour per "
                 "scheme; bands: their 95% bootstrap intervals.")


def plot_throughput(report: rp.Report):
    p = report.points()
    if p.empty or not (p["mode"] == "server").any():
        return md("_no server points: no throughput-latency curve_")
    return shown(plots.plot_throughput_vs_latency(p), "throughput-vs-latency",
                 "Output tokens/s per GPU against p50 TPOT at each concurrency (labels: "
                 "requests in flight); up and to the left is better. Valid points only.")


def show_goodput(report: rp.Report):
    text, good = sections.goodput(report)
    display(md(text))
    if good.empty:
        return None
    display(collapsed("Goodput per point", "", good.rename(columns=sections.GOODPUT_LABELS),
                      "{:.3g}"))
    return shown(plots.plot_goodput(good, report.slo), "goodput",
                 "Goodput: requests/s meeting every SLO (solid), against all completed "
                 "requests/s (dotted).")


def show_points(report: rp.Report):
    text, t = sections.points_table(report)
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
        return shown(figs.plot_speed_gains(t, gain_cols=cols), f"{short}-gains",
                     report.caption(f"{short.upper()} gains; quality was not measured."))
    ref = f"{short}_gain_vs_{report.reference}_pct" if report.reference else None
    gain_col = ref if ref in cols else (cols[0] if cols else f"{short}_gain_vs_base_pct")
    if gain_col not in t:
        t = t.assign(**{gain_col: float("nan")})
    return shown(figs.plot_quality_vs_speed(t, gain_col=gain_col),
                 f"quality-vs-{short}", report.caption(f"Quality vs {short.upper()} gain."))


def show_quality_panel(report: rp.Report):
    """Per variant: accuracy delta, flips, KLD and top-1 agreement, each with its interval."""
    text, t = sections.quality_panel(report)
    if not text:
        return None
    display(md(text))
    return table(t)


def show_claims(report: rp.Report):
    text, summary, detail = sections.claims(report)
    display(md(text))
    if summary.empty:
        return None
    display(table(summary, "{:.1f}"))
    return collapsed("Claim check, point by point", "", detail, "{:.1f}")


def plot_claim_maps(report: rp.Report):
    """Runs with offline batches over 2+ prompt lengths x 2+ batch sizes: per claim, the
    claim's scheme against its reference and every other scheme, as heat maps of the TTFT
    and TPOT reduction with the claim in both readings."""
    maps = claim_maps(report.points(), report.point_samples(), report.claims)
    if not maps:
        return None
    display(md("## Claim map: where the reduction grows, peaks and fades\n\n"
               "Offline whole batches (vllm.LLM) over prompt length x batch size. Each cell: "
               "the p50 reduction of the first scheme against the second with its 95 % "
               "interval; framed solid where the latency reading of the claim holds "
               "(time cut by the claimed %), dashed where only the speed reading holds "
               "(rate x (1 + claim/100)); grey: invalid or not measured."))
    for variant, reference, cells in maps[:-1]:
        display(_claim_map_figure(report, variant, reference, cells))
    return _claim_map_figure(report, *maps[-1])


def _claim_map_figure(report: rp.Report, variant: str, reference: str, cells: pd.DataFrame):
    summary = claim_map_summary(cells).set_index("metric")
    words = "; ".join(
        f"{'TTFT' if m == 'ttft_ms' else 'TPOT'}: best {reduction_words(r.best_pct)} at "
        f"{r.best_at}, worst {reduction_words(r.worst_pct)} at {r.worst_at}; claim holds at "
        f"{r.latency_reading_holds} (latency reading) / {r.speed_reading_holds} (speed "
        f"reading) of {r.valid_cells} valid cells"
        for m, r in summary.iterrows() if r.get("valid_cells", 0))
    title = f"{variant} vs {reference} ({report.model}, {report.hardware})"
    return shown(plot_claim_map(cells, title=title), f"claim-map-{variant}-vs-{reference}",
                 report.caption(words or "no valid cell"))


def show_other_evidence(report: rp.Report):
    """Points measured but deciding no cell of the verdict card, each with why (single
    trial, eager GPU engine, interrupted stage, invalid, superseded run)."""
    ev = report_card(report).evidence
    return collapsed("Other evidence (decides no cell of the verdict card)",
                     "Points the card leaves out, with the reason; their figures are in the "
                     "tables and curves above, marked.", ev)


def show_invalid(report: rp.Report):
    text, t = sections.invalid_points(report)
    title, _, body = text.removeprefix("## ").partition("\n\n")
    return collapsed(title, body, t)


def show_crosscheck(report: rp.Report):
    text, t = sections.crosscheck(report)
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
    text, t = sections.roofline(report)
    display(md(text))
    return table(t, "{:.2f}")


def show_changes(report: rp.Report):
    text, t = sections.changes(report)
    display(md(text))
    return None if t.empty else table(t)


def show_environment(report: rp.Report):
    return md(sections.environment_markdown(report))
