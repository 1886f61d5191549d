"""Quality tables from tidy accuracy records: each task's primary metric per variant, and
the mean delta vs base per variant (paired, with an approximate 95% interval)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evalkit.core.records import ok_rows

#: preferred metric per task, in order; the first one present is the task's primary metric.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "word_perplexity")


def primary_metric(df: pd.DataFrame, task: str) -> str | None:
    """The task's headline metric: the first of PRIMARY_METRICS present in its records."""
    have = set(df.loc[(df["stage"] == "accuracy") & (df["task"] == task), "metric"])
    for m in PRIMARY_METRICS:
        if m in have:
            return m
    return sorted(have)[0] if have else None


def accuracy_wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant x task (primary metric): value, stderr, delta, CI, p-value, n."""
    acc = ok_rows(df[df["stage"] == "accuracy"])
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




@dataclass(frozen=True)
class QualitySignal:
    """A variant's quality against base as a recommendation weighs it.

    ``delta_pts``/``lo_pts``/``hi_pts``: the change and its 95% interval in points (higher is
    better); ``signal`` names what was measured (today: the mean paired accuracy delta of the
    tasks' primary metrics); ``detail``: tasks and documents behind it.
    """

    signal: str
    delta_pts: float
    lo_pts: float
    hi_pts: float
    detail: str

    def below(self, tolerance_pts: float) -> bool:
        """True when the whole interval lies below ``-tolerance_pts`` (a measured loss
        beyond what the study tolerates)."""
        return self.hi_pts < -tolerance_pts

    def text(self) -> str:
        """``-4.9 pts [-7.0, -2.8]``."""
        return f"{self.delta_pts:+.1f} pts [{self.lo_pts:+.1f}, {self.hi_pts:+.1f}]"


def quality_signal(df: pd.DataFrame, variant: str, *, base: str = "base") -> QualitySignal | None:
    """The one quality signal of ``variant`` that recommendations, the verdict card and the
    summary weigh, picked from a run's records; None where none was measured.

    Today that is the mean over tasks of the paired primary-metric delta vs ``base`` with its
    interval (:func:`quality_per_variant`). Records of more sensitive signals (e.g. token
    flips or KL divergence against base) are meant to be preferred here, in this one place.
    The base variant itself is 0 by definition when base was scored.
    """
    q = quality_per_variant(df)
    if variant == base:
        if (df["stage"] == "accuracy").any() and (df["variant"] == base).any():
            return QualitySignal("accuracy delta", 0.0, 0.0, 0.0, "the reference of quality")
        return None
    row = q[q["variant"] == variant]
    if row.empty or pd.isna(row["quality_delta"].iloc[0]):
        return None
    r = row.iloc[0]
    return QualitySignal(
        "accuracy delta", float(r["quality_delta"]) * 100, float(r["quality_ci_low"]) * 100,
        float(r["quality_ci_high"]) * 100,
        f"mean paired delta of {int(r['tasks'])} task(s), {int(r['docs'])} documents")
