"""What the notebooks call: one function per cell, each displaying its own result.

The notebooks stay a readable story (parameters, then one call per step); the logic lives
in the stage modules and is unit-tested there. Display helpers return objects Jupyter
renders (Markdown, DataFrames, figures) so nbconvert keeps them in the HTML report.

``import evalkit.ui.notebook as ek`` is every notebook's one entry: this module holds the
cells of the stage notebooks 01-03 and re-exports the eval-only stage cells
(:mod:`evalkit.ui.eval_cells`), the report's (:mod:`evalkit.ui.report_cells`) and the
summary page's (:mod:`evalkit.ui.summary_cells`), on first use (see ``_LAZY``).

Stage cells take the :class:`evalkit.core.units.StageResult` a stage's ``run_stage`` returns
(a bare records DataFrame is accepted too); :func:`check_stage` fails the notebook after
its tables are shown.
"""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd

from evalkit.assets import models as assets
from evalkit.core.errors import StageError
from evalkit.core.schemes import SCHEMES
from evalkit.core.units import StageResult
from evalkit.stages import quantize as q
from evalkit.ui.display import display, md, table
from evalkit.ui.figures import Figure, legend_entries, shown  # noqa: F401 -- re-exported
from evalkit.ui.stage_context import StageContext, open_stage  # noqa: F401 -- re-exported

#: Cells defined elsewhere, re-exported on first use: they need the eval environment
#: (scipy, through evalkit.metrics and the report), which the quantize kernel running
#: notebook 01 does not have -- so this module must import without them.
_LAZY = {
    "evalkit.ui.eval_cells": ("show_accuracy", "plot_accuracy", "plot_latency"),
    "evalkit.ui.report_cells": (
        "build_report", "show_header", "plot_load_curves", "plot_quality_vs_speed", "plot_throughput",
        "show_accuracy_detail", "show_answer", "show_changes", "show_claims", "show_context",
        "show_crosscheck", "show_environment", "show_goodput", "show_headline", "show_invalid",
        "show_points", "show_roofline"),
    "evalkit.ui.summary_cells": (
        "SummaryContext", "open_summary", "plot_summary_gains", "show_summary_answer",
        "show_summary_definitions", "show_summary_header", "show_summary_runs",
        "show_summary_table"),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMES])


Records = StageResult | pd.DataFrame


def records_of(result: Records) -> pd.DataFrame:
    """The records of a stage's result (a records DataFrame is its own records)."""
    return result.records if isinstance(result, StageResult) else result


def check_stage(result: Records, ctx: StageContext | None = None) -> None:
    """Fail the notebook (after everything was shown and written) if any unit failed, or, when
    the study's latency section says ``unsupported: error``, if a latency unit is unsupported.

    The failed units are listed from the failed records (one per variant and task or
    workload); unsupported ones from the result's failures.

    Raises:
        StageError: one error naming every unit that did not finish.
    """
    records = records_of(result)
    lat = ctx.cfg.latency if ctx is not None else None
    unsupported_is_error = bool(isinstance(result, StageResult) and result.stage == "latency"
                                and lat is not None and lat.unsupported == "error")
    failed = records[records["status"] == "failed"]
    if failed.empty:
        if isinstance(result, StageResult):
            result.raise_for_failures(unsupported_is_error=unsupported_is_error)
        return
    units = failed.drop_duplicates(["variant", "task", "workload"])

    def text(x: object) -> str:  # task/workload are NA (pandas' missing value) where unused
        return "" if x is None or pd.isna(x) else str(x)

    lines = [f"{r.variant} {text(r.task) or text(r.workload)}: {r.note}"
             for r in units.itertuples()]
    if unsupported_is_error:
        lines += [f"unsupported: {f}" for f in result.unsupported]
    raise StageError(f"{len(units)} unit(s) failed (others kept): " + "; ".join(lines))


# ------------------------------------------------------------------------------ 01 quantize


def show_study(ctx: StageContext):
    cfg = ctx.cfg
    rows = [{"variant": v.name, "scheme": SCHEMES[v.scheme].label, "method": v.method,
             "what": SCHEMES[v.scheme].description} for v in cfg.variants]
    display(md(f"**Study `{cfg.study}`** — run `{ctx.run.run_id}`\n\n{cfg.description}"))
    return table(pd.DataFrame(rows))


def resolve_model(ctx: StageContext):
    m = assets.resolve_model(ctx.cfg.model)
    cav = "".join(f"\n- {c}" for c in m.caveats)
    return md(f"**Model** `{m.name}` from `{m.path}` (source: {m.source}).{cav}")


def quantize(ctx: StageContext) -> StageResult:
    # failed units are data: the notebook shows its tables, then check_stage fails it
    return q.run_stage(ctx.cfg, ctx.run)


def show_quantize(result: Records):
    records = records_of(result)
    if records.empty:
        return md("_no variants_")
    wide = records.pivot_table(index=["variant", "scheme", "method"], columns="metric",
                               values="value", aggfunc="first").reset_index()
    for col in ("checkpoint_size_bytes", "weight_bytes"):
        if col in wide:
            wide[col.replace("_bytes", "_MB")] = wide.pop(col) / 1e6
    status = records.groupby("variant")["status"].first()
    wide["status"] = wide["variant"].map(status)
    return table(wide)


# ------------------------------------------------------------------------------ 02 accuracy


def accuracy(ctx: StageContext) -> StageResult:
    from evalkit.stages import accuracy as acc
    from evalkit.stages import latency as lat

    if ctx.cfg.accuracy is None:
        from evalkit.core.records import empty_records

        return StageResult("accuracy", empty_records())
    # one engine start per variant: its latency points are measured on the accuracy
    # stage's server before it stops (the latency stage then finds them done)
    before_close = ((lambda session: lat.measure_on(ctx.cfg, ctx.run, session))
                    if ctx.cfg.latency is not None else None)
    # failed units are data: the notebook shows its tables, then check_stage fails it
    return acc.run_stage(ctx.cfg, ctx.run, before_close=before_close)


# ------------------------------------------------------------------------------ 03 latency


def latency(ctx: StageContext) -> StageResult:
    from evalkit.stages import latency as lat

    if ctx.cfg.latency is None:
        from evalkit.core.records import empty_records

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


