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

from evalkit.config import StudyConfig, load_study
from evalkit.errors import StageError
from evalkit.rundir import Run, create_run, open_run, stage_env

for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")
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
    from evalkit.schemes import SCHEMES

    rows = [{"variant": v.name, "scheme": SCHEMES[v.scheme].label, "method": v.method,
             "what": SCHEMES[v.scheme].description} for v in cfg.variants]
    from IPython.display import display

    display(_md(f"**Study `{cfg.study}`** — run `{ctx.run.run_id}`\n\n{cfg.description}"))
    return _table(pd.DataFrame(rows))


def resolve_model(ctx: StageContext):
    from evalkit import assets

    m = assets.resolve_model(ctx.cfg.model)
    cav = "".join(f"\n- {c}" for c in m.caveats)
    return _md(f"**Model** `{m.name}` from `{m.path}` (source: {m.source}).{cav}")


def quantize(ctx: StageContext) -> pd.DataFrame:
    from evalkit import quantize as q

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
    from evalkit import accuracy as acc

    if ctx.cfg.accuracy is None:
        from evalkit.records import empty_records

        return empty_records()
    return acc.run_stage(ctx.cfg, ctx.run)


def show_accuracy(records: pd.DataFrame):
    from IPython.display import display

    from evalkit import accuracy as acc

    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return _md("_accuracy was not measured in this study_")
    docs = r[r["stat"] == "value"].groupby("task")["n"].max()
    note = ", ".join(f"{t}: {int(n)} documents" for t, n in docs.items() if pd.notna(n))
    display(_md(f"Every figure below rests on the same documents per task ({note}). A delta is "
                "significant when its 95% paired-bootstrap interval excludes 0."))
    return _table(acc.accuracy_table(r))


def plot_accuracy(records: pd.DataFrame):
    from evalkit import report

    return _shown(report.plot_accuracy_deltas(records[records["stage"] == "accuracy"]))


# ------------------------------------------------------------------------------ 03 latency


def latency(ctx: StageContext) -> pd.DataFrame:
    from evalkit import latency as lat

    if ctx.cfg.latency is None:
        from evalkit.records import empty_records

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
    from evalkit import report

    return _shown(report.plot_latency_curves(
        records, metric=metric, caption=f"{metric}: p50 over requests at each concurrency "
        "(vLLM definitions; TPOT excludes the first token)."))


# ------------------------------------------------------------------------------ 04 report


def build_report(ctx: StageContext):
    from evalkit import views

    return views.build(ctx.cfg, ctx.run)


def show_header(report: Any):
    from evalkit import views

    return _md(views.header_markdown(report))


def show_headline(report: Any):
    from IPython.display import display

    from evalkit import views

    display(_md(views.headline_markdown(report)))
    return _table(views.headline_table(report), "{:.2f}")


def _shown(fig):
    """Return a figure for Jupyter to display once (closed, so the inline backend does not
    show it a second time)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


def plot_quality_vs_speed(report: Any, metric: str = "ttft_ms"):
    from evalkit import report as rp

    table = report.table()
    short = metric.removesuffix("_ms")
    cols = [c for c in table.columns if c.startswith(f"{short}_gain_vs_")]
    if "quality_delta" not in table or table["quality_delta"].drop(
            table.index[table["variant"] == report.base], errors="ignore").isna().all():
        return _shown(rp.plot_speed_gains(
            table, gain_cols=cols,
            caption=report.caption(f"{short.upper()} gains; quality was not measured.")))
    ref = f"{short}_gain_vs_{report.reference}_pct" if report.reference else None
    gain_col = ref if ref in cols else (cols[0] if cols else f"{short}_gain_vs_base_pct")
    if gain_col not in table:
        table = table.assign(**{gain_col: float("nan")})
    return _shown(rp.plot_quality_vs_speed(
        table, gain_col=gain_col, caption=report.caption(f"Quality vs {short.upper()} gain.")))


def show_claims(report: Any):
    from IPython.display import display

    from evalkit import views

    md, summary, detail = views.claims(report)
    display(_md(md))
    if not summary.empty:
        display(_table(summary, "{:.1f}"))
    return _table(detail, "{:.1f}")


def show_invalid(report: Any):
    from IPython.display import display

    from evalkit import views

    md, table = views.invalid_points(report)
    display(_md(md))
    return None if table.empty else _table(table)


def show_crosscheck(report: Any):
    from IPython.display import display

    from evalkit import views

    md, table = views.crosscheck(report)
    display(_md(md))
    return _table(table, "{:.2f}")


def show_roofline(report: Any):
    from IPython.display import display

    from evalkit import views

    md, table = views.roofline(report)
    display(_md(md))
    return _table(table, "{:.2f}")


def show_changes(report: Any):
    from IPython.display import display

    from evalkit import views

    md, table = views.changes(report)
    display(_md(md))
    return None if table.empty else _table(table)


def show_environment(report: Any):
    from evalkit import views

    return _md(views.environment_markdown(report))
