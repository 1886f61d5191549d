"""The cells of notebook 05 (the cross-run summary page)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.analysis import decision as dc
from evalkit.analysis import plots
from evalkit.analysis import summary as sm
from evalkit.metrics import points
from evalkit.ui.card import card_html, export_card
from evalkit.ui.display import collapsed, html_block, md
from evalkit.ui.figures import shown
from evalkit.ui.views import REGIME_LABELS, capacity_markdown

__all__ = [
    "SummaryContext",
    "open_summary",
    "plot_summary_gains",
    "show_summary_answer",
    "show_summary_capacity",
    "show_summary_definitions",
    "show_summary_repeats",
    "show_other_evidence",
    "show_summary_header",
    "show_verdict_card",
    "show_summary_runs",
    "show_summary_table",
]


TITLE = "Which quantization for which workload"


@dataclass
class SummaryContext:
    runs: list[sm.RunSummary]
    page: Path
    card: dc.Card
    #: :func:`evalkit.analysis.summary.repeats` of the runs
    repeated: pd.DataFrame


def open_summary(runs: list[str], page: str) -> SummaryContext:
    """Open every run named (run directories or output roots) for the summary page, and
    build its verdict card."""
    loaded = sm.load(list(runs))
    out = Path(page).resolve()
    repeated = sm.repeats(loaded)
    return SummaryContext(loaded, out, sm.verdict_card(loaded, out, TITLE, repeated), repeated)


def show_verdict_card(ctx: SummaryContext):
    """The first screen: the claim in both readings and the scheme to use per workload and
    model shape; also written as ``<page>.verdict.svg`` and ``.png`` beside the page."""
    if ctx.page.parent.is_dir():
        export_card(ctx.card, ctx.page.with_suffix(".verdict"))
    return html_block(card_html(ctx.card))


def show_other_evidence(ctx: SummaryContext):
    """Measured points that decide no cell (single trial, eager engine, interrupted stage,
    invalid, superseded run, or a cell another run answers), with the reason."""
    ev = ctx.card.evidence
    return collapsed("Other evidence (decides no cell)", "Points and cells measured but not "
                     "used for the card above, each with the reason.", ev)


def show_summary_header(ctx: SummaryContext):
    models = sorted({s.shape for s in ctx.runs})
    hw = sorted({s.report.hardware for s in ctx.runs})
    old = [s.label for s in ctx.runs if not s.current]
    gone = f" Superseded (never deciding): {', '.join(old)}." if old else ""
    return md(f"{len(ctx.runs)} runs · models: {', '.join(models)} · hardware: "
              f"{', '.join(hw)}. Built from valid latency points only (no prefix-cache hits, "
              "no figure below its physical floor); each run's own report is linked below."
              f"{gone} The card is also a picture for slides: `{ctx.page.stem}.verdict.png` "
              f"and `.svg` beside this page.")


def show_summary_capacity(ctx: SummaryContext):
    """Capacity at the SLO of every run that measured rate sweeps, first: what a production
    owner compares (requests/s per GPU within the SLO, per traffic mix)."""
    parts = []
    for s in ctx.runs:
        if not s.current:
            continue
        table = capacity_markdown(s.report)
        if table:
            parts.append(f"**{s.label}** ({s.shape}, {s.report.hardware}):\n\n{table}")
    if not parts:
        return md("_no run measured a rate sweep: no capacity at the SLO_")
    return md("## Capacity at the SLO under real traffic\n\n" + "\n\n".join(parts))


_REPEAT_METRIC = {"capacity_req_s_per_gpu": "capacity at the SLO (req/s per GPU)",
                  "ttft_ms": "p50 TTFT", "tpot_ms": "p50 TPOT"}


def show_summary_repeats(ctx: SummaryContext):
    """The same measurement in two sittings (equal setups, same GPU model): how far its
    numbers moved, against the runs' own intervals."""
    t = ctx.repeated
    head = ("## Repeated measurements\n\nA variant measured by two runs with the same model, "
            "quantization, engine settings, prompts, trials, SLO and GPU model, in different "
            "sittings (other machines of that model, other days). Change = later − earlier, "
            "in % of the earlier value, with its 95 % interval (capacity: the difference of "
            "the runs' bootstrap draws; latency: bootstrap over both runs' requests). "
            "*Moved beyond its interval*: the interval excludes 0, so the number moved between "
            "sittings by more than either run's own interval shows: read such a figure's "
            "interval as within one sitting. `evalkit compare RUN_A RUN_B` lists every point.")
    if t.empty:
        return md(head + "\n\n_no measurement was repeated in the runs of this page_")
    lines = ["| variant | measured | earlier run → later run | earlier | later | change "
             "[95 % interval] | moved beyond its interval |", "|---|---|---|---|---|---|---|"]
    for r in t.itertuples(index=False):
        unit = "" if r.unit == "req/s" else f" {r.unit}"
        lines.append(
            f"| `{r.variant}` | {r.workload} · "
            + ("" if pd.isna(r.concurrency) else f"{r.concurrency} in flight, closed loop · ")
            + f"{_REPEAT_METRIC.get(r.metric, r.metric)} | "
            f"{r.run_a} → {r.run_b} | {r.value_a:.3g}{unit} | {r.value_b:.3g}{unit} | "
            f"{r.change_pct:+.1f} % "
            + ("(no interval: a bound, or no raw data) | " if pd.isna(r.ci_low_pct) else
               f"[{r.ci_low_pct:+.1f}, {r.ci_high_pct:+.1f}] | ")
            + f"{'**yes**' if r.beyond else 'no'} |")
    return md(head + "\n\n" + "\n".join(lines))


def show_summary_answer(ctx: SummaryContext):
    return md(sm.answer_markdown(ctx.runs))


def plot_summary_gains(ctx: SummaryContext):
    rows = sm.gain_ranges(ctx.runs)
    if rows.empty:
        return md("_no comparison with valid points: no gains figure_")
    return shown(plots.plot_regime_gains(rows), "regime-gains",
                 "Per comparison and model, the variant's TTFT and TPOT reduction against the "
                 "reference over the deciding points of each regime (valid, several trials, "
                 "compiled engine, variant finished; bar: min to max, dot: median). > 0: the "
                 "variant is faster, < 0: slower.")


def show_summary_table(ctx: SummaryContext):
    t = sm.comparison_rows(ctx.runs)
    t = t[t["decision"] != "no valid point"].rename(columns={**REGIME_LABELS,
                                                              "min_trials": "fewest trials",
                                                              "excluded": "decides nothing because"})
    return collapsed("Gains per run, comparison and regime",
                     "Ranges of how much faster or slower the variant is over the valid "
                     "points of each regime; *faster on E2E* is the decision of the answer "
                     "above, except in a row that says why it decides nothing.", t)


def show_summary_runs(ctx: SummaryContext):
    t = sm.runs_table(ctx.runs, ctx.page)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in t.columns[:-1])
        + (f'<td><a href="{html.escape(r["report"])}">report</a></td>' if r["report"]
           else "<td>no report</td>") + "</tr>" for _, r in t.iterrows())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    return html_block(f"<h2>Runs</h2><p>Every run the page is built from, with the one-line "
                      f"verdict of its own report.</p><table class='evalkit-runs'><thead><tr>"
                      f"{head}</tr></thead><tbody>{rows}</tbody></table>")


def show_summary_definitions(ctx: SummaryContext):
    regs = "\n".join(f"- **{k}**: {v}." for k, v in points.REGIMES.items())
    return md("## Definitions\n\nTTFT, TPOT and E2E latency follow vLLM: TTFT per request; "
              "TPOT = (E2E − TTFT) / (output tokens − 1); p50 over requests (server) or over "
              "timed iterations (offline). Reduction = (reference − variant) / reference × "
              "100. Intervals: percentile bootstrap of both variants' per-request values, "
              "widened to contain every trial's own reduction. A point is valid when its "
              "prompt-token prefix-cache hit rate is at most 1% and no figure is below its "
              f"physical floor.\n\n**Workload regimes**\n\n{regs}")
