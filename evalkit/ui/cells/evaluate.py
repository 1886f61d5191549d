"""The cells of notebooks 02 (accuracy) and 03 (latency), in the eval kernel."""

from __future__ import annotations

import pandas as pd

from evalkit.analysis import plots
from evalkit.analysis.capacity import rate_rows
from evalkit.analysis.quality import accuracy_wide, quality_panel
from evalkit.analysis.report_figures import plot_accuracy_deltas
from evalkit.core.records import empty_records
from evalkit.core.units import StageResult
from evalkit.metrics.points import latency_points
from evalkit.stages import accuracy as acc
from evalkit.stages import latency as lat
from evalkit.stages.accuracy.distance import QUALITY_STAGE
from evalkit.ui.cells.stage import Records, StageContext, check_stage, open_stage, records_of
from evalkit.ui.display import display, md, table
from evalkit.ui.figures import shown

__all__ = ["accuracy", "check_stage", "latency", "open_stage", "plot_accuracy", "plot_latency",
           "quality", "show_accuracy", "show_latency", "show_quality"]


def accuracy(ctx: StageContext) -> StageResult:
    if ctx.cfg.accuracy is None:
        return StageResult("accuracy", empty_records())
    # one engine start per variant: its latency points are measured on the accuracy
    # stage's server before it stops (the latency stage then finds them done). A cluster
    # worker's share (ctx.variants) leaves latency to its latency stage, which the cluster
    # schedules where the study's latency may run (one accelerator type, a node to itself)
    before_close = ((lambda session: lat.measure_on(ctx.cfg, ctx.run, session))
                    if ctx.cfg.latency is not None and ctx.variants is None else None)
    # failed units are data: the notebook shows its tables, then check_stage fails it
    return acc.run_stage(ctx.cfg, ctx.run, before_close=before_close)


def quality(ctx: StageContext) -> StageResult:
    """KL divergence, top-1 agreement and perplexity vs base on held-out text (the study's
    ``quality`` section; empty without it)."""
    if ctx.cfg.quality is None:
        return StageResult(QUALITY_STAGE, empty_records())
    if ctx.variants is not None:
        # every variant against base in one process: the pass after the cluster workers
        ctx.run.log("quality: left to the pass over all variants")
        return StageResult(QUALITY_STAGE, empty_records())
    return acc.run_quality(ctx.cfg, ctx.run)


def show_quality(result: Records):
    records = records_of(result)
    if records.empty:
        return md("_distribution distance was not measured (no `quality` section)_")
    return table(quality_panel(records))


def latency(ctx: StageContext) -> StageResult:
    if ctx.cfg.latency is None:
        return StageResult("latency", empty_records())
    # failed (and, with latency.unsupported: error, unsupported) points are data: the
    # notebook shows its tables, then check_stage(result, ctx) fails it
    return lat.run_stage(ctx.cfg, ctx.run)


def show_latency(result: Records):
    records = records_of(result)
    r = records[records["stage"] == "latency"]
    if r.empty:
        return md("_latency was not measured in this study_")
    bad = r[r["status"] != "ok"].drop_duplicates("variant")
    if len(bad):
        display(md("**Not measured:**\n" + "".join(
            f"\n- `{b.variant}` ({b.status}): {b.note}" for b in bad.itertuples())))
    ok = r[(r["status"] == "ok") & r["metric"].isin(["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"])
           & r["stat"].isin(["p50", "p90", "p99", "mean"])]
    if ok.empty:
        return md("_no latency points measured_")
    wide = ok.pivot_table(index=["variant", "mode", "workload", "concurrency"],
                          columns=["metric", "stat"], values="value", aggfunc="first")
    wide.columns = [f"{m} {s}" for m, s in wide.columns]
    return table(wide.reset_index(), "{:.1f}")


def show_accuracy(result: Records):
    records = records_of(result)
    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return md("_accuracy was not measured in this study_")
    docs = r[r["stat"] == "value"].groupby("task")["n"].max()
    note = ", ".join(f"{t}: {int(n)} documents" for t, n in docs.items() if pd.notna(n))
    display(md(f"Every figure below rests on the same documents per task ({note}). A delta is "
               "significant when its 95% paired-bootstrap interval excludes 0."))
    return table(acc.accuracy_table(r))


def plot_accuracy(result: Records):
    records = records_of(result)
    if accuracy_wide(records[records["stage"] == "accuracy"])["delta"].dropna().empty:
        return md("_no paired accuracy delta (no quantized variant scored beside base): no "
                  "accuracy figure_")
    return shown(plot_accuracy_deltas(records[records["stage"] == "accuracy"]),
                 "accuracy-deltas", "Per task, each variant's delta vs base with its paired-"
                 "bootstrap 95% interval (points of the task's primary metric).")


def plot_latency(result: Records, metric: str = "tpot_ms"):
    records = records_of(result)
    points = latency_points(records[~rate_rows(records).to_numpy()], gpus_per_engine=0)
    modes = [m for m in ("server", "offline") if (points["mode"] == m).any()]
    if not modes:
        return md(f"_no latency points: no {metric} curve_")
    return shown(plots.plot_metric_vs_load(points, metric=metric, mode=modes[0]),
                 f"{metric}-curves",
                 f"{metric}: p50 over requests at each load (vLLM definitions; TPOT excludes "
                 "the first token); band: the 95% bootstrap interval of the p50.")
