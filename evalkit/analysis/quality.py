"""Quality tables from tidy accuracy and quality records: each task's primary metric per
variant, the mean delta vs base per variant (paired, with an approximate 95% interval), and
the signals beyond accuracy deltas (flips, KL divergence, top-1 agreement): the per-variant
quality panel and :func:`most_sensitive_signal`, the one quality figure a decision uses."""

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
    #: the variant's most sensitive measured signal (:func:`most_sensitive_signal`) where it
    #: is not the accuracy delta itself: KL divergence, top-1 agreement or flips
    sensitive: SensitiveSignal | None = None

    def below(self, tolerance_pts: float) -> bool:
        """True when the whole interval lies below ``-tolerance_pts`` (a measured loss
        beyond what the study tolerates)."""
        return self.hi_pts < -tolerance_pts

    def text(self) -> str:
        """``-4.9 pts [-7.0, -2.8]``, then the most sensitive signal where one was measured
        (``; mean KLD 0.1850 nats [0.1630, 0.2110] (lambada_openai)``)."""
        acc = f"{self.delta_pts:+.1f} pts [{self.lo_pts:+.1f}, {self.hi_pts:+.1f}]"
        return acc + (f"; {self.sensitive.text()}" if self.sensitive is not None else "")


def quality_signal(df: pd.DataFrame, variant: str, *, base: str = "base") -> QualitySignal | None:
    """The one quality signal of ``variant`` that recommendations, the verdict card and the
    summary weigh, picked from a run's records; None where none was measured.

    The tolerance is read on the mean over tasks of the paired primary-metric delta vs
    ``base`` with its interval (:func:`quality_per_variant`; the study's tolerance is in
    accuracy points); beside it the signal carries the variant's most sensitive measured
    signal (:func:`most_sensitive_signal`: KL divergence, top-1 agreement or flips, where
    the quality section or the flips measured them), which the card and the summary show
    with its interval. The base variant itself is 0 by definition when base was scored.
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
    sensitive = most_sensitive_signal(df, variant)
    return QualitySignal(
        "accuracy delta", float(r["quality_delta"]) * 100, float(r["quality_ci_low"]) * 100,
        float(r["quality_ci_high"]) * 100,
        f"mean paired delta of {int(r['tasks'])} task(s), {int(r['docs'])} documents",
        sensitive=sensitive if sensitive is not None and sensitive.signal != "accuracy_delta"
        else None)


# ------------------------------------------------------------------ signals beyond accuracy

#: The quality signals of a variant, each with the value that means "no change from base".
#: ``kld_mean``: mean per-token KL(base || variant) on held-out text (nats); ``top1_agreement``:
#: fraction of tokens whose most likely next token agrees; ``flip_rate``: fraction of a task's
#: documents whose correctness changed; ``accuracy_delta``: the task's primary-metric delta.
SIGNALS: dict[str, tuple[str, float, str]] = {
    # name -> (label, no-change value, unit)
    "kld_mean": ("mean KLD", 0.0, "nats"),
    "top1_agreement": ("top-1 agreement", 1.0, "fraction"),
    "flip_rate": ("flip rate", 0.0, "fraction"),
    "accuracy_delta": ("accuracy delta", 0.0, "fraction"),
}

SIGNAL_COLUMNS = ["variant", "scheme", "signal", "label", "task", "metric", "value", "ci_low",
                  "ci_high", "unit", "n", "null", "separation"]


def _separation(value: float, lo: float, hi: float, null: float) -> float:
    """How far the observed value lies from the no-change value, in units of its interval's
    half-width on that side: ``|value - null| / |value - bound|`` with ``bound`` the interval
    end facing ``null``. 0 when the value is the no-change value; ``inf`` when the interval
    is degenerate at a value other than it; NaN when unknown."""
    if any(math.isnan(x) for x in (value, lo, hi)):
        return math.nan
    dist = abs(value - null)
    if dist == 0:
        return 0.0
    width = (value - lo) if value > null else (hi - value)
    return math.inf if width <= 0 else dist / width


def quality_signals(df: pd.DataFrame) -> pd.DataFrame:
    """Every measured quality signal of every non-base variant, tidy: one row per variant x
    signal x task (the held-out text's name for the distance signals), with its interval
    and its separation from the no-change value (see :data:`SIGNALS`).

    Sources: the accuracy records' ``delta``/``ci_low``/``ci_high`` and ``flip_rate`` (with
    ``flip_rate_ci_low``/``_ci_high``) of each task's primary metric; the quality records'
    ``kld_nats`` (``mean``, ``ci_low``, ``ci_high``) and ``top1_agreement``.
    """
    ok = ok_rows(df)
    rows: list[dict] = []
    accr = ok[ok["stage"] == "accuracy"]
    for task in sorted(accr["task"].dropna().unique()):
        metric = primary_metric(accr, task)
        sub = accr[(accr["task"] == task) & (accr["metric"] == metric)]
        for variant, g in sub.groupby("variant", sort=False):
            st = dict(zip(g["stat"], g["value"], strict=False))
            n = g["n"].dropna()
            common = {"variant": variant, "scheme": g["scheme"].iloc[0], "task": task,
                      "metric": metric, "n": int(n.max()) if len(n) else None}
            if "delta" in st:
                rows.append({**common, "signal": "accuracy_delta", "value": st["delta"],
                             "ci_low": st.get("ci_low", np.nan),
                             "ci_high": st.get("ci_high", np.nan)})
            if "flip_rate" in st:
                rows.append({**common, "signal": "flip_rate", "value": st["flip_rate"],
                             "ci_low": st.get("flip_rate_ci_low", np.nan),
                             "ci_high": st.get("flip_rate_ci_high", np.nan)})
    qual = ok[ok["stage"] == "quality"]
    for (variant, task), g in qual.groupby(["variant", "task"], sort=False):
        for signal, metric, stat in (("kld_mean", "kld_nats", "mean"),
                                     ("top1_agreement", "top1_agreement", "value")):
            m = g[g["metric"] == metric]
            st = dict(zip(m["stat"], m["value"], strict=False))
            if stat not in st:
                continue
            n = m["n"].dropna()
            rows.append({"variant": variant, "scheme": g["scheme"].iloc[0], "task": task,
                         "metric": metric, "n": int(n.max()) if len(n) else None,
                         "signal": signal, "value": st[stat],
                         "ci_low": st.get("ci_low", np.nan), "ci_high": st.get("ci_high", np.nan)})
    out = pd.DataFrame(rows, columns=[c for c in SIGNAL_COLUMNS if c not in
                                      ("label", "unit", "null", "separation")])
    out["label"] = [SIGNALS[s][0] for s in out["signal"]]
    out["null"] = [SIGNALS[s][1] for s in out["signal"]]
    out["unit"] = [SIGNALS[s][2] for s in out["signal"]]
    out["separation"] = [_separation(float(v), float(lo), float(hi), float(z)) for v, lo, hi, z
                         in zip(out["value"], out["ci_low"], out["ci_high"], out["null"],
                                strict=True)]
    return out[SIGNAL_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class SensitiveSignal:
    """A variant's most sensitive measured quality signal (see :func:`most_sensitive_signal`).

    Attributes:
        variant: the variant.
        signal: a key of :data:`SIGNALS` (``kld_mean``, ``top1_agreement``, ``flip_rate``,
            ``accuracy_delta``).
        label: its display name.
        task: the lm-eval task (flips, accuracy) or held-out text (distances) it was
            measured on.
        value: the observed value.
        ci_low: lower bound of its interval.
        ci_high: upper bound.
        unit: the unit of value.
        null: the value that means "no change from base".
        separation: distance from ``null`` in half-widths of the interval (0 = no change
            seen; > 1 = the interval excludes the no-change value).
        n: documents (flips, accuracy) or tokens (distances) behind it.
    """

    variant: str
    signal: str
    label: str
    task: str
    value: float
    ci_low: float
    ci_high: float
    unit: str
    null: float
    separation: float
    n: int | None

    @property
    def detected(self) -> bool:
        """True when the interval excludes the no-change value."""
        return bool(self.ci_low > self.null or self.ci_high < self.null)

    def text(self) -> str:
        """``mean KLD 0.0123 nats [0.0101, 0.0150] (lambada_openai)``."""
        fmt = "{:+.3f}" if self.signal == "accuracy_delta" else "{:.4f}"
        unit = f" {self.unit}" if self.unit == "nats" else ""
        return (f"{self.label} {fmt.format(self.value)}{unit} [{fmt.format(self.ci_low)}, "
                f"{fmt.format(self.ci_high)}] ({self.task})")


def most_sensitive_signal(df: pd.DataFrame, variant: str) -> SensitiveSignal | None:
    """The measured quality signal of ``variant`` that departs furthest from "no change",
    relative to its own interval: the largest :func:`quality_signals` separation; ties (and
    variants with no change anywhere) go to the first of :data:`SIGNALS`' order (KLD, top-1
    agreement, flip rate, accuracy delta), the order of sensitivity the literature reports.

    Args:
        df: a run's records (accuracy and, when measured, quality rows).
        variant: a non-base variant.

    Returns:
        The signal with its interval; None when nothing was measured for the variant.
    """
    s = quality_signals(df)
    s = s[(s["variant"] == variant) & s["value"].notna()]
    if s.empty:
        return None
    order = {k: i for i, k in enumerate(SIGNALS)}
    s = s.assign(_sep=s["separation"].fillna(-1.0), _ord=s["signal"].map(order))
    best = s.sort_values(["_sep", "_ord"], ascending=[False, True]).iloc[0]
    n = best["n"]
    return SensitiveSignal(
        variant=variant, signal=str(best["signal"]), label=str(best["label"]),
        task=str(best["task"]), value=float(best["value"]), ci_low=float(best["ci_low"]),
        ci_high=float(best["ci_high"]), unit=str(best["unit"]), null=float(best["null"]),
        separation=float(best["separation"]), n=None if pd.isna(n) else int(n))


def quality_panel(df: pd.DataFrame) -> pd.DataFrame:
    """One row per non-base variant: each task's accuracy delta and flip rate, then mean and
    p99 KLD, top-1 agreement and perplexity, each "value [low, high]"; and the most
    sensitive signal. Empty when no signal was measured."""
    s = quality_signals(df)
    if s.empty:
        return pd.DataFrame(columns=["variant"])

    def fmt(v: float, lo: float, hi: float, spec: str) -> str:
        if pd.isna(v):
            return ""
        return f"{v:{spec}} [{lo:{spec}}, {hi:{spec}}]" if not (pd.isna(lo) or pd.isna(hi)) \
            else f"{v:{spec}}"

    qual = ok_rows(df[df["stage"] == "quality"])
    rows = []
    for variant, g in s.groupby("variant", sort=False):
        row: dict = {"variant": variant, "scheme": g["scheme"].iloc[0]}
        for r in g[g["signal"].isin(["accuracy_delta", "flip_rate"])].itertuples():
            spec = "+.3f" if r.signal == "accuracy_delta" else ".3f"
            row[f"{r.label} {r.task} ({r.metric})"] = fmt(r.value, r.ci_low, r.ci_high, spec)
        q = qual[qual["variant"] == variant]
        for metric, stat, label, spec in (
                ("kld_nats", "mean", "mean KLD (nats)", ".4f"),
                ("kld_nats", "p99", "p99 KLD (nats)", ".3f"),
                ("top1_agreement", "value", "top-1 agreement", ".3f"),
                ("perplexity", "value", "perplexity", ".2f")):
            st = dict(zip(q.loc[q["metric"] == metric, "stat"], q.loc[q["metric"] == metric,
                                                                      "value"], strict=False))
            if stat in st:
                pre = "" if stat in ("mean", "value") else f"{stat}_"
                row[label] = fmt(st[stat], st.get(f"{pre}ci_low", np.nan),
                                 st.get(f"{pre}ci_high", np.nan), spec)
        best = most_sensitive_signal(df, variant)
        row["most sensitive signal"] = best.text() if best else ""
        rows.append(row)
    return pd.DataFrame(rows).fillna("")
