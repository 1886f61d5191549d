"""The cells of notebooks 02 and 03 that need the eval environment (the accuracy table, the
report's figures). Re-exported by :mod:`evalkit.ui.notebook`."""

from __future__ import annotations

import pandas as pd

from evalkit.analysis import report as rp
from evalkit.core.units import StageResult
from evalkit.stages import accuracy as acc
from evalkit.ui.display import display, md, table
from evalkit.ui.figures import shown


def records_of(result: StageResult | pd.DataFrame) -> pd.DataFrame:
    """The records of a stage's result (a records DataFrame is its own records)."""
    return result.records if isinstance(result, StageResult) else result


def show_accuracy(result: StageResult | pd.DataFrame):
    records = records_of(result)
    r = records[records["stage"] == "accuracy"]
    if r.empty:
        return md("_accuracy was not measured in this study_")
    docs = r[r["stat"] == "value"].groupby("task")["n"].max()
    note = ", ".join(f"{t}: {int(n)} documents" for t, n in docs.items() if pd.notna(n))
    display(md(f"Every figure below rests on the same documents per task ({note}). A delta is "
               "significant when its 95% paired-bootstrap interval excludes 0."))
    return table(acc.accuracy_table(r))


def plot_accuracy(result: StageResult | pd.DataFrame):
    records = records_of(result)
    return shown(rp.plot_accuracy_deltas(records[records["stage"] == "accuracy"]),
                 "accuracy-deltas", "Per task, each variant's delta vs base with its paired-"
                 "bootstrap 95% interval (points of the task's primary metric).")


def plot_latency(result: StageResult | pd.DataFrame, metric: str = "tpot_ms"):
    return shown(rp.plot_latency_curves(records_of(result), metric=metric), f"{metric}-curves",
                 f"{metric}: p50 over requests at each concurrency (vLLM definitions; TPOT "
                 "excludes the first token).")
