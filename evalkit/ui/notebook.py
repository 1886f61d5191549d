"""What the notebooks call: one function per cell, each displaying its own result.

The notebooks stay a readable story (parameters, then one call per step); the logic lives
in the stage modules and is unit-tested there. Display helpers return objects Jupyter
renders (Markdown, DataFrames, figures) so nbconvert keeps them in the HTML report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.core.config import StudyConfig
from evalkit.core.errors import StageError
from evalkit.core.offline import set_offline_defaults
from evalkit.core.run import Run, create_run, open_run, stage_env
from evalkit.preflight import load_study

set_offline_defaults()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class StageContext:
    cfg: StudyConfig
    run: Run
    stage: str


def open_stage(config_path: str, run_dir: str | None, stage: str) -> StageContext:
    """Open the run a notebook writes into (a new one when run interactively without run_dir)."""
    if run_dir:
        run = open_run(run_dir)
        cfg = run.config()
    else:
        cfg = load_study(config_path)
        run = create_run(cfg, Path(config_path))
    stage_env(run, stage)
    return StageContext(cfg, run, stage)


def _md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def _table(df: pd.DataFrame, floatfmt: str = "{:.4g}"):
    """A DataFrame rendered without index, numbers formatted, NaN shown as n/a."""
    if df is None or df.empty:
        return _md("_(nothing to show)_")
    return df.style.hide(axis="index").format(floatfmt, na_rep="n/a",
                                                subset=df.select_dtypes("number").columns)


def check_stage(records: pd.DataFrame) -> None:
    """Fail the notebook (after everything was shown and written) if any unit failed."""
    failed = records[records["status"] == "failed"]
    if failed.empty:
        return
    units = failed.drop_duplicates(["variant", "task", "workload"])

    def text(x: object) -> str:  # task/workload are NA (pandas' missing value) where unused
        return "" if x is None or pd.isna(x) else str(x)

    lines = [f"{r.variant} {text(r.task) or text(r.workload)}: {r.note}"
             for r in units.itertuples()]
    raise StageError(f"{len(units)} unit(s) failed (others kept): " + "; ".join(lines))


# ------------------------------------------------------------------------------ 01 quantize


def show_study(ctx: StageContext):
    cfg = ctx.cfg
    from evalkit.core.schemes import SCHEMES

    rows = [{"variant": v.name, "scheme": SCHEMES[v.scheme].label, "method": v.method,
             "what": SCHEMES[v.scheme].description} for v in cfg.variants]
    from IPython.display import display

    display(_md(f"**Study `{cfg.study}`** — run `{ctx.run.run_id}`\n\n{cfg.description}"))
    return _table(pd.DataFrame(rows))


def resolve_model(ctx: StageContext):
    from evalkit.assets import models as assets

    m = assets.resolve_model(ctx.cfg.model)
    cav = "".join(f"\n- {c}" for c in m.caveats)
    return _md(f"**Model** `{m.name}` from `{m.path}` (source: {m.source}).{cav}")


def quantize(ctx: StageContext) -> pd.DataFrame:
    from evalkit.stages import quantize as q

    return q.run_stage(ctx.cfg, ctx.run, raise_on_failure=False)


def show_quantize(records: pd.DataFrame):
    if records.empty:
        return _md("_no variants_")
    wide = records.pivot_table(index=["variant", "scheme", "method"], columns="metric",
                               values="value", aggfunc="first").reset_index()
    for col in ("checkpoint_size_bytes", "weight_bytes"):
        if col in wide:
            wide[col.replace("_bytes", "_MB")] = wide.pop(col) / 1e6
    status = records.groupby("variant")["status"].first()
    wide["status"] = wide["variant"].map(status)
    return _table(wide)


# ------------------------------------------------------------------------------ 02 accuracy


def accuracy(ctx: StageContext) -> pd.DataFrame:
    from evalkit.stages import accuracy as acc

    if ctx.cfg.accuracy is None:
        from evalkit.core.records import empty_records

        return empty_records()
    # failed units are data: the notebook shows its tables, then check_stage fails it
    return acc.run_stage(ctx.cfg, ctx.run, raise_on_failure=False)


def show_accuracy(records: pd.DataFrame):
    from IPython.display import display

    from evalkit.stages import accuracy as acc

    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return _md("_accuracy was not measured in this study_")
    docs = r[r["stat"] == "value"].groupby("task")["n"].max()
    note = ", ".join(f"{t}: {int(n)} documents" for t, n in docs.items() if pd.notna(n))
    display(_md(f"Every figure below rests on the same documents per task ({note}). A delta is "
                "significant when its 95% paired-bootstrap interval excludes 0."))
    return _table(acc.accuracy_table(r))


def plot_accuracy(records: pd.DataFrame):
    from evalkit.analysis import report

    return _shown(report.plot_accuracy_deltas(records[records["stage"] == "accuracy"]),
                  "accuracy-deltas", "Per task, each variant's delta vs base with its paired-"
                  "bootstrap 95% interval (points of the task's primary metric).")


# ------------------------------------------------------------------------------ 03 latency


def latency(ctx: StageContext) -> pd.DataFrame:
    from evalkit.stages import latency as lat

    if ctx.cfg.latency is None:
        from evalkit.core.records import empty_records

        return empty_records()
    return lat.run_stage(ctx.cfg, ctx.run, raise_on_failure=False)


def show_latency(records: pd.DataFrame):
    from IPython.display import display

    r = records[records["stage"] == "latency"]
    if r.empty:
        return _md("_latency was not measured in this study_")
    bad = r[r["status"] != "ok"].drop_duplicates("variant")
    if len(bad):
        display(_md("**Not measured:**\n" + "".join(
            f"\n- `{b.variant}` ({b.status}): {b.note}" for b in bad.itertuples())))
    ok = r[(r["status"] == "ok") & r["metric"].isin(["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"])
           & r["stat"].isin(["p50", "p90", "p99", "mean"])]
    if ok.empty:
        return _md("_no latency points measured_")
    wide = ok.pivot_table(index=["variant", "mode", "workload", "concurrency"],
                          columns=["metric", "stat"], values="value", aggfunc="first")
    wide.columns = [f"{m} {s}" for m, s in wide.columns]
    return _table(wide.reset_index(), "{:.1f}")


def plot_latency(records: pd.DataFrame, metric: str = "tpot_ms"):
    from evalkit.analysis import report

    return _shown(report.plot_latency_curves(records, metric=metric), f"{metric}-curves",
                  f"{metric}: p50 over requests at each concurrency (vLLM definitions; TPOT "
                  "excludes the first token).")


# ------------------------------------------------------------------------------ 04 report


def build_report(ctx: StageContext):
    from evalkit.ui import views

    return views.build(ctx.cfg, ctx.run)


def show_header(report: Any):
    from evalkit.ui import views

    return _md(views.header_markdown(report))


def show_answer(report: Any):
    """The first screen: a verdict over all points and a recommendation per regime."""
    from IPython.display import display

    from evalkit.ui import views

    display(_md(views.answer_markdown(report)))
    text, table = views.regime_table(report)
    if table.empty:
        return None
    display(_md(text))
    return _table(table)


def show_context(report: Any):
    from evalkit.ui import views

    return _md(views.context_markdown(report))


def plot_load_curves(report: Any, metric: str = "ttft_ms"):
    """TTFT or TPOT against load with interval bands, server and offline points."""
    from IPython.display import display

    from evalkit.analysis import plots

    p = report.points()
    modes = [m for m in ("server", "offline") if (p["mode"] == m).any()] if len(p) else []
    if not modes:
        return _md(f"_no latency points: no {metric} curve_")
    for m in modes[:-1]:
        display(_figure_of_load(plots, p, metric, m))
    return _figure_of_load(plots, p, metric, modes[-1])


def _figure_of_load(plots: Any, p: pd.DataFrame, metric: str, mode: str):
    what = "requests in flight" if mode == "server" else "offline batch size"
    return _shown(plots.plot_metric_vs_load(p, metric=metric, mode=mode),
                  f"{metric}-vs-load-{mode}",
                  f"p50 {metric.removesuffix('_ms').upper()} against {what}; grey crosses: "
                  "invalid points (left out of the lines); hollow markers: single-trial points; "
                  "squares: points measured on another host.")


def plot_throughput(report: Any):
    from evalkit.analysis import plots

    p = report.points()
    if p.empty or not (p["mode"] == "server").any():
        return _md("_no server points: no throughput-latency curve_")
    return _shown(plots.plot_throughput_vs_latency(p), "throughput-vs-latency",
                  "Output tokens/s per GPU against p50 TPOT at each concurrency (labels: "
                  "requests in flight); up and to the left is better. Valid points only.")


def show_goodput(report: Any):
    from IPython.display import display

    from evalkit.analysis import plots
    from evalkit.ui import views

    text, good = views.goodput(report)
    display(_md(text))
    if good.empty:
        return None
    display(_collapsed("Goodput per point", "", good.rename(columns=views.GOODPUT_LABELS),
                       "{:.3g}"))
    return _shown(plots.plot_goodput(good, report.slo), "goodput",
                  "Goodput: requests/s meeting every SLO (solid), against all completed "
                  "requests/s (dotted).")


def show_points(report: Any):
    from evalkit.ui import views

    text, table = views.points_table(report)
    return _collapsed("All latency points", text, table, "{:.3g}")


def show_headline(report: Any):
    from IPython.display import display

    from evalkit.ui import views

    display(_md(views.headline_markdown(report)))
    return _table(views.headline_table(report), "{:.2f}")


def legend_entries(fig) -> list[str]:
    """The legend texts of every axes of a figure, in order (entries repeated across panels
    listed once)."""
    out: list[str] = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts() if t.get_text() not in out]
    return out


class Figure:
    """A figure as inline SVG with its text kept as text, in an HTML ``<figure>`` that names
    it and lists its legend entries (``data-figure``, ``data-legend``), with a caption.

    The rendered report can then be checked from its DOM: each legend entry must appear as
    text in the SVG drawn next to it.
    """

    def __init__(self, fig, name: str, caption: str = "") -> None:
        import io

        import matplotlib.pyplot as plt

        buf = io.StringIO()
        with plt.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(fig)
        svg = buf.getvalue()
        self.svg = svg[svg.index("<svg"):]
        self.name, self.caption, self.legend = name, caption, legend_entries(fig)

    def _repr_html_(self) -> str:
        import html

        legend = html.escape("|".join(self.legend), quote=True)
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure class="evalkit-figure" data-figure="{html.escape(self.name)}" '
                f'data-legend="{legend}">{self.svg}{cap}</figure>')

    def _repr_svg_(self) -> str:
        return self.svg


def _shown(fig, name: str = "figure", caption: str = ""):
    """A figure for Jupyter to display once, as :class:`Figure` (closed, so the inline
    backend does not show it a second time)."""
    return Figure(fig, name, caption)


def _collapsed(title: str, text: str, table: pd.DataFrame | None, floatfmt: str = "{:.4g}"):
    """A section folded under its title (long tables at the end of the report)."""
    import html

    from IPython.display import HTML
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(text) if text else ""
    if table is not None and not table.empty:
        body += _table(table, floatfmt).to_html()
    n = f" ({len(table)} rows)" if table is not None and not table.empty else ""
    return HTML(f'<details class="evalkit-details"><summary><strong>{html.escape(title)}'
                f"</strong>{n}</summary>{body}</details>")


def plot_quality_vs_speed(report: Any, metric: str = "ttft_ms"):
    from evalkit.analysis import report as rp

    table = report.table()
    short = metric.removesuffix("_ms")
    # a gain column without data (its reference has no latency here) gets no legend entry
    cols = [c for c in table.columns if c.startswith(f"{short}_gain_vs_")
            and table[c].notna().any()]
    if "quality_delta" not in table or table["quality_delta"].drop(
            table.index[table["variant"] == report.base], errors="ignore").isna().all():
        return _shown(rp.plot_speed_gains(table, gain_cols=cols), f"{short}-gains",
                      report.caption(f"{short.upper()} gains; quality was not measured."))
    ref = f"{short}_gain_vs_{report.reference}_pct" if report.reference else None
    gain_col = ref if ref in cols else (cols[0] if cols else f"{short}_gain_vs_base_pct")
    if gain_col not in table:
        table = table.assign(**{gain_col: float("nan")})
    return _shown(rp.plot_quality_vs_speed(table, gain_col=gain_col),
                  f"quality-vs-{short}", report.caption(f"Quality vs {short.upper()} gain."))


def show_claims(report: Any):
    from IPython.display import display

    from evalkit.ui import views

    md, summary, detail = views.claims(report)
    display(_md(md))
    if summary.empty:
        return None
    display(_table(summary, "{:.1f}"))
    return _collapsed("Claim check, point by point", "", detail, "{:.1f}")


def show_invalid(report: Any):
    from evalkit.ui import views

    md, table = views.invalid_points(report)
    title, _, text = md.removeprefix("## ").partition("\n\n")
    return _collapsed(title, text, table)


def show_crosscheck(report: Any):
    from evalkit.ui import views

    md, table = views.crosscheck(report)
    title, _, text = md.removeprefix("## ").partition("\n\n")
    return _collapsed(title, text, table, "{:.2f}")


def show_accuracy_detail(records: pd.DataFrame):
    """Per-task accuracy of every variant, folded (the report's appendix)."""
    from evalkit.stages import accuracy as acc

    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return _md("_accuracy was not measured in this study_")
    return _collapsed("Accuracy per task", "Every variant's score per task and metric, with "
                      "its paired delta vs base, 95% interval and McNemar p-value.",
                      acc.accuracy_table(r))


def show_roofline(report: Any):
    from IPython.display import display

    from evalkit.ui import views

    md, table = views.roofline(report)
    display(_md(md))
    return _table(table, "{:.2f}")


def show_changes(report: Any):
    from IPython.display import display

    from evalkit.ui import views

    md, table = views.changes(report)
    display(_md(md))
    return None if table.empty else _table(table)


def show_environment(report: Any):
    from evalkit.ui import views

    return _md(views.environment_markdown(report))


# ------------------------------------------------------------------------------ 05 summary


@dataclass
class SummaryContext:
    runs: list[Any]
    page: Path


def open_summary(runs: list[str], page: str) -> SummaryContext:
    """Open every run named (run directories or output roots) for the summary page."""
    from evalkit.analysis import summary as sm

    return SummaryContext(sm.load(list(runs)), Path(page).resolve())


def show_summary_header(ctx: SummaryContext):
    models = sorted({s.shape for s in ctx.runs})
    hw = sorted({s.report.hardware for s in ctx.runs})
    return _md(f"# Which quantization for which workload\n\n{len(ctx.runs)} runs · models: "
               f"{', '.join(models)} · hardware: {', '.join(hw)}. Built from valid latency "
               "points only (no prefix-cache hits, no figure below its physical floor); "
               "each run's own report is linked below.")


def show_summary_answer(ctx: SummaryContext):
    from evalkit.analysis import summary as sm

    return _md(sm.answer_markdown(ctx.runs))


def plot_summary_gains(ctx: SummaryContext):
    from evalkit.analysis import plots
    from evalkit.analysis import summary as sm

    rows = sm.gain_ranges(ctx.runs)
    if rows.empty:
        return _md("_no comparison with valid points: no gains figure_")
    return _shown(plots.plot_regime_gains(rows), "regime-gains",
                  "Per comparison and model, the variant's TTFT and TPOT reduction against the "
                  "reference over the valid points of each regime (bar: min to max, dot: "
                  "median). > 0: the variant is faster.")


def show_summary_table(ctx: SummaryContext):
    from evalkit.analysis import summary as sm
    from evalkit.ui.views import REGIME_LABELS

    t = sm.comparison_rows(ctx.runs).rename(columns={**REGIME_LABELS,
                                                     "min_trials": "fewest trials"})
    return _collapsed("Gains per run, comparison and regime",
                      "Ranges of the variant's reduction over the valid points of each "
                      "regime (%, > 0 = faster); *faster on E2E* is the decision of the "
                      "answer above.", t)


def show_summary_runs(ctx: SummaryContext):
    from IPython.display import HTML

    from evalkit.analysis import summary as sm

    t = sm.runs_table(ctx.runs, ctx.page)
    import html

    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in t.columns[:-1])
        + (f'<td><a href="{html.escape(r["report"])}">report</a></td>' if r["report"]
           else "<td>no report</td>") + "</tr>" for _, r in t.iterrows())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    return HTML(f"<h2>Runs</h2><p>Every run the page is built from, with the one-line verdict "
                f"of its own report.</p><table class='evalkit-runs'><thead><tr>{head}</tr>"
                f"</thead><tbody>{rows}</tbody></table>")


def show_summary_definitions(ctx: SummaryContext):
    from evalkit.metrics import points

    regs = "\n".join(f"- **{k}**: {v}." for k, v in points.REGIMES.items())
    return _md("## Definitions\n\nTTFT, TPOT and E2E latency follow vLLM: TTFT per request; "
               "TPOT = (E2E − TTFT) / (output tokens − 1); p50 over requests (server) or over "
               "timed iterations (offline). Reduction = (reference − variant) / reference × "
               "100. Intervals: percentile bootstrap of both variants' per-request values, "
               "widened to contain every trial's own reduction. A point is valid when its "
               "prompt-token prefix-cache hit rate is at most 1% and no figure is below its "
               f"physical floor.\n\n**Workload regimes**\n\n{regs}")
