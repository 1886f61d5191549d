"""Compare two runs of a study: what changed in quality and in speed, and is it beyond noise.

``evalkit compare RUN_A RUN_B`` (A = the earlier run, B = the later one) and the report's
"Change since the previous run" section both call :func:`compare_runs`, which loads each
run's records and raw data and hands them to the pure :func:`compare`.

Per variant and metric, the change is ``B - A``:

* **Accuracy** (stat ``value`` of each task's metrics): where both runs kept lm-eval's
  per-document scores (``raw/accuracy/<variant>/<task>/scores.parquet``) on the same
  documents, the interval is :func:`evalkit.metrics.stats.paired_bootstrap` over documents, the
  same paired bootstrap the accuracy stage uses against base. A **regression** is an
  interval entirely on the worse side of 0.
* **Latency** (server mode; ``ttft_ms``, ``tpot_ms``, ``itl_ms``, ``e2el_ms``; p50 by
  default): from the per-request values each run saved (``raw/latency/<variant>/<point>.json``,
  or ``<point>.json.gz`` in an archived run), the interval is
  :func:`evalkit.metrics.stats.independent_bootstrap` of the percentile's difference -- the noise
  the spread of requests implies. A **regression** is an interval
  entirely above 0 (slower) *and* a change above ``min_latency_change_pct`` of A's value,
  because the spread within one run does not show all the noise between runs (a busier
  machine one day).
* **Status**: a unit (variant x task, variant x latency point) that was ``ok`` in A and is
  ``failed``/``unsupported`` in B is a regression too.

Where a run has no raw data (a record only), the change is reported without an interval
and is never flagged. Exit status of ``evalkit compare``: 0 when nothing regressed,
:data:`REGRESSION_EXIT_CODE` (5) when something did.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.core import records as rec
from evalkit.core.errors import EvalkitError
from evalkit.core.io import json_exists, read_json
from evalkit.metrics import stats
from evalkit.metrics.accuracy import metric_label
from evalkit.metrics.latency import pool_metrics
from evalkit.stages.latency.raw import load_window_trials

#: ``evalkit compare`` exits with this when a regression is flagged.
REGRESSION_EXIT_CODE = 5

LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")

#: Capacity at the SLO is compared per GPU (the figure a production owner weighs).
CAPACITY_METRIC = "capacity_req_s_per_gpu"

COLUMNS = [
    "stage", "variant", "task", "workload", "concurrency", "request_rate", "metric", "stat",
    "unit", "higher_is_better", "value_a", "value_b", "change", "change_pct", "ci_low",
    "ci_high", "n_a", "n_b", "method", "regression", "note",
]

_POINT = ["variant", "workload", "concurrency", "request_rate"]


@dataclass
class RunData:
    """One run's records plus the raw per-sample data :func:`compare` can use.

    Attributes:
        run_id: the run's id.
        records: tidy records (``records.parquet``).
        scores: ``(variant, task)`` -> lm-eval per-document scores (accuracy SCORE_COLUMNS).
        requests: ``(variant, workload, concurrency, request_rate)`` -> per-request values in
            ms per metric (``ttft_ms``, ``tpot_ms``, ``itl_ms``, ``e2el_ms``); a rate point's
            over its steady-state window, as its records.
        capacity: ``(variant, workload)`` -> the capacity stage's saved result
            (``raw/latency/<variant>/capacity_<workload>.json``: value, censored, bootstrap
            draws in req/s per engine, gpus per engine).
    """

    run_id: str
    records: pd.DataFrame
    scores: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    requests: dict[tuple[str, str, int, float], dict[str, list[float]]] = field(
        default_factory=dict)
    capacity: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def load_run_data(path: str | os.PathLike[str]) -> RunData:
    """Read a run directory's records and the raw data behind them.

    Raises:
        EvalkitError: not a run directory with records.
    """

    p = Path(path)
    df = rec.load_runs(p)
    run_id = str(df["run_id"].dropna().iloc[0]) if df["run_id"].notna().any() else p.name
    data = RunData(run_id=run_id, records=df)
    acc = df[(df["stage"] == "accuracy") & (df["status"] == "ok")]
    for variant, task in acc[["variant", "task"]].drop_duplicates().itertuples(index=False):
        f = p / "raw" / "accuracy" / str(variant) / str(task) / "scores.parquet"
        if f.is_file():
            data.scores[(str(variant), str(task))] = pd.read_parquet(f)
    lat = df[(df["stage"] == "latency") & (df["mode"] == "server") & (df["status"] == "ok")
             & df["metric"].isin(LATENCY_METRICS)]
    for v, w, c, r in lat[_POINT].drop_duplicates().itertuples(index=False):
        if pd.isna(w) or pd.isna(c) or pd.isna(r):
            continue
        # every trial's per-request file (plain or archived .gz) over the requests the
        # records summarise (a rate point's steady-state window), pooled
        trials = load_window_trials(p / "raw" / "latency" / str(v), str(w), int(c), float(r))
        if trials:
            m = pool_metrics(trials)
            data.requests[(str(v), str(w), int(c), float(r))] = {
                k: [x for x in m[k] if not math.isnan(x)] for k in LATENCY_METRICS}
    cap = df[(df["stage"] == "latency") & (df["metric"] == CAPACITY_METRIC)]
    for v, w in cap[["variant", "workload"]].drop_duplicates().itertuples(index=False):
        f = p / "raw" / "latency" / str(v) / f"capacity_{w}.json"
        if json_exists(f):
            data.capacity[(str(v), str(w))] = read_json(f)
    return data


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str],
                 **options: Any) -> pd.DataFrame:
    """Load two run directories and :func:`compare` them (A earlier, B later)."""
    return compare(load_run_data(run_a), load_run_data(run_b), **options)


def _percentile(q: float):  # noqa: ANN202 -- a numpy-style reduction
    def f(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return np.percentile(x, q, axis=axis)

    return f


def _pct(change: float, base: float) -> float:
    if base == 0 or math.isnan(base) or math.isnan(change):
        return math.nan
    return change / abs(base) * 100.0


def _row(**kw: Any) -> dict[str, Any]:
    out = dict.fromkeys(COLUMNS)
    out.update(kw)
    return out


def compare(
    a: RunData, b: RunData, *,
    latency_stats: Sequence[str] = ("p50",),
    min_latency_change_pct: float = 5.0,
    min_capacity_change_pct: float = 5.0,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per variant and metric, the change from run A to run B, with intervals and flags.

    Pure: reads nothing, writes nothing.

    Args:
        a: the earlier run.
        b: the later run.
        latency_stats: percentiles of the latency metrics to compare (``p50``, ``p90``...).
        min_latency_change_pct: a latency change smaller than this (% of A's value) is
            never flagged, whatever its interval.
        min_capacity_change_pct: likewise for a fall in capacity at the SLO.
        resamples: bootstrap resamples.
        confidence: confidence level of the intervals.
        seed: bootstrap seed.

    Returns:
        One row per compared (variant, task|point, metric, stat) with :data:`COLUMNS`:
        ``value_a``, ``value_b``, ``change`` (= B - A), ``change_pct`` (% of A),
        ``ci_low``/``ci_high`` (interval of the change, NaN without raw data), ``method``,
        ``regression`` and a ``note``. Sorted by stage, variant, task/workload, metric.
    """
    rows = _accuracy_rows(a, b, resamples=resamples, confidence=confidence, seed=seed)
    rows += _latency_rows(a, b, latency_stats=latency_stats,
                          min_change_pct=min_latency_change_pct, resamples=resamples,
                          confidence=confidence, seed=seed)
    rows += _capacity_rows(a, b, min_change_pct=min_capacity_change_pct,
                           confidence=confidence, seed=seed)
    rows += _status_rows(a, b)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    df["regression"] = df["regression"].fillna(False).astype(bool)
    for col in ("value_a", "value_b", "change", "change_pct", "ci_low", "ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["concurrency"] = df["concurrency"].astype("Int64")
    order = ["stage", "variant", "task", "workload", "concurrency", "request_rate", "metric",
             "stat"]
    return df.sort_values(order, na_position="first", ignore_index=True)


def _accuracy_rows(a: RunData, b: RunData, **boot: Any) -> list[dict[str, Any]]:

    def values(d: RunData) -> pd.DataFrame:
        r = d.records
        return r[(r["stage"] == "accuracy") & (r["status"] == "ok") & (r["stat"] == "value")]

    key = ["variant", "task", "metric"]
    m = values(a).merge(values(b), on=key, suffixes=("_a", "_b"))
    rows = []
    for r in m.itertuples(index=False):
        hib = r.higher_is_better_a if not pd.isna(r.higher_is_better_a) else r.higher_is_better_b
        va, vb = float(r.value_a), float(r.value_b)
        lo = hi = math.nan
        method, note = "records only", "no per-document scores in both runs: no interval"
        sa, sb = a.scores.get((r.variant, r.task)), b.scores.get((r.variant, r.task))
        if sa is not None and sb is not None:
            pair = []
            for s in (sa, sb):
                lab = [metric_label(x, f) for x, f in zip(s["metric"], s["filter"], strict=True)]
                pair.append(s[np.array(lab) == r.metric][["subtask", "doc_id", "doc_hash",
                                                          "score"]])
            j = pair[0].merge(pair[1], on=["subtask", "doc_id"], suffixes=("_a", "_b"))
            same_docs = (len(j) == len(pair[0]) == len(pair[1]) and len(j) > 0
                         and (j["doc_hash_a"] == j["doc_hash_b"]).all())
            means_match = same_docs and all(
                abs(float(s.mean()) - v) <= 1e-9 * max(1.0, abs(v))
                for s, v in ((j["score_a"], va), (j["score_b"], vb)))
            if not same_docs:
                note = "the runs scored different documents: no paired interval"
            elif not means_match:
                note = "metric is not a mean of per-document scores: no interval"
            else:
                br = stats.paired_bootstrap(j["score_a"].to_numpy(), j["score_b"].to_numpy(),
                                            **boot)
                lo, hi = br.ci_low, br.ci_high
                method = f"paired bootstrap over {br.n} documents"
                note = ""
        change = vb - va
        worse = (hi < 0) if hib is not False else (lo > 0)
        rows.append(_row(
            stage="accuracy", variant=r.variant, task=r.task, metric=r.metric, stat="value",
            unit=r.unit_a, higher_is_better=None if pd.isna(hib) else bool(hib),
            value_a=va, value_b=vb, change=change, change_pct=_pct(change, va),
            ci_low=lo, ci_high=hi, n_a=r.n_a, n_b=r.n_b, method=method,
            regression=bool(worse) if not math.isnan(lo) else False, note=note or None))
    return rows


def _latency_rows(a: RunData, b: RunData, *, latency_stats: Sequence[str],
                  min_change_pct: float, **boot: Any) -> list[dict[str, Any]]:
    def values(d: RunData) -> pd.DataFrame:
        r = d.records
        return r[(r["stage"] == "latency") & (r["mode"] == "server") & (r["status"] == "ok")
                 & r["metric"].isin(LATENCY_METRICS) & r["stat"].isin(list(latency_stats))]

    key = [*_POINT, "metric", "stat"]
    m = values(a).merge(values(b), on=key, suffixes=("_a", "_b"))
    rows = []
    for r in m.itertuples(index=False):
        point = (str(r.variant), str(r.workload), int(r.concurrency), float(r.request_rate))
        va, vb = float(r.value_a), float(r.value_b)
        xa = a.requests.get(point, {}).get(r.metric)
        xb = b.requests.get(point, {}).get(r.metric)
        lo = hi = math.nan
        method, note = "records only", "no per-request data in both runs: no interval"
        if xa and xb and r.stat.startswith("p"):
            br = stats.independent_bootstrap(xa, xb, stat=_percentile(float(r.stat[1:])),
                                             **boot)
            lo, hi = br.ci_low, br.ci_high
            va, vb = float(np.percentile(xa, float(r.stat[1:]))), float(
                np.percentile(xb, float(r.stat[1:])))
            method = f"bootstrap of the {r.stat} over {len(xa)} / {len(xb)} values"
            note = None
        change = vb - va
        pct = _pct(change, va)
        flagged = bool(not math.isnan(lo) and lo > 0 and pct > min_change_pct)
        if flagged:
            note = f"slower by {pct:.1f}% (interval above 0, beyond {min_change_pct:g}%)"
        rows.append(_row(
            stage="latency", variant=r.variant, workload=r.workload,
            concurrency=r.concurrency, request_rate=r.request_rate, metric=r.metric,
            stat=r.stat, unit=r.unit_a, higher_is_better=False, value_a=va, value_b=vb,
            change=change, change_pct=pct, ci_low=lo, ci_high=hi, n_a=r.n_a, n_b=r.n_b,
            method=method, regression=flagged, note=note))
    return rows


def _capacity_rows(a: RunData, b: RunData, *, min_change_pct: float, confidence: float,
                   seed: int) -> list[dict[str, Any]]:
    """Capacity at the SLO per GPU of each (variant, traffic mix) both runs measured.

    Interval: percentile interval of ``B - A`` over the two runs' saved bootstrap draws
    (:func:`evalkit.metrics.traffic.capacity_at_slo`: each run's own requests resampled, and
    its bracket's spread where the first failing rate was saturated), paired at random --
    the runs' draws are independent, and two runs with one seed would otherwise pair the
    same uniform positions inside their brackets. A censored capacity (a bound) gets no
    interval. Flagged: the interval entirely below 0 and a fall beyond ``min_change_pct``."""

    def values(d: RunData) -> pd.DataFrame:
        r = d.records
        return r[(r["stage"] == "latency") & (r["metric"] == CAPACITY_METRIC)
                 & (r["stat"] == "value") & (r["status"] == "ok")]

    m = values(a).merge(values(b), on=["variant", "workload", "metric", "stat"],
                        suffixes=("_a", "_b"))
    rng = np.random.default_rng([seed, 2])
    alpha = 1 - confidence
    rows = []
    for r in m.itertuples(index=False):
        key = (str(r.variant), str(r.workload))
        va, vb = float(r.value_a), float(r.value_b)
        ca, cb = a.capacity.get(key), b.capacity.get(key)
        lo = hi = math.nan
        method, note = "records only", "no bootstrap draws in both runs: no interval"
        if ca is not None and cb is not None:
            bounds = [f"{run} {c.get('censored')}" for run, c in (("A", ca), ("B", cb))
                      if c.get("censored") != "none"]
            da, db = (np.nan_to_num(np.asarray(c.get("draws") or [], dtype=float), nan=0.0)
                      / float(c.get("gpus") or 1) for c in (ca, cb))
            if bounds:
                note = f"censored ({', '.join(bounds)}): a bound, no interval"
            elif da.size and db.size:
                n = min(da.size, db.size)
                diff = rng.permutation(db)[:n] - rng.permutation(da)[:n]
                lo, hi = (float(x) for x in np.percentile(diff, [alpha * 50,
                                                                 100 - alpha * 50]))
                method = f"difference of the runs' bootstrap draws ({n}, independent)"
                note = None
        change = vb - va
        pct = _pct(change, va)
        flagged = bool(not math.isnan(hi) and hi < 0 and -pct > min_change_pct)
        if flagged:
            note = f"{-pct:.1f}% fewer req/s (interval below 0, beyond {min_change_pct:g}%)"
        rows.append(_row(
            stage="capacity", variant=r.variant, workload=r.workload, metric=r.metric,
            stat="value", unit=r.unit_a, higher_is_better=True, value_a=va, value_b=vb,
            change=change, change_pct=pct, ci_low=lo, ci_high=hi, n_a=r.n_a, n_b=r.n_b,
            method=method, regression=flagged, note=note))
    return rows


def _unit_status(df: pd.DataFrame) -> dict[tuple, tuple[str, str]]:
    """(stage, variant, task, workload, concurrency, request_rate) -> (status, note)."""
    d = df[df["stage"].isin(["accuracy", "latency"])
           & ~(df["mode"].fillna("") == "server-metrics")]
    d = d[(d["stage"] == "accuracy") | d["workload"].notna()]
    out: dict[tuple, tuple[str, str]] = {}
    cols = ["stage", "variant", "task", "workload", "concurrency", "request_rate"]
    for k, g in d.groupby(cols, dropna=False, sort=False):
        key = tuple(None if pd.isna(x) else x for x in k)
        if (g["status"] == "ok").any():
            out[key] = ("ok", "")
        else:
            bad = g.iloc[0]
            out[key] = (str(bad["status"]), str(bad["note"] or "")[:300])
    return out


def _status_rows(a: RunData, b: RunData) -> list[dict[str, Any]]:
    sa, sb = _unit_status(a.records), _unit_status(b.records)
    rows = []
    for key, (st_a, _) in sa.items():
        if st_a != "ok" or key not in sb or sb[key][0] == "ok":
            continue
        stage, variant, task, workload, conc, rate = key
        rows.append(_row(
            stage=stage, variant=variant, task=task, workload=workload, concurrency=conc,
            request_rate=rate, metric="status", stat="status", method="unit status",
            regression=True, note=f"ok in {a.run_id}, {sb[key][0]} in {b.run_id}: {sb[key][1]}"))
    return rows


def regressions(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`compare` result that are flagged as regressions."""
    return df[df["regression"]] if len(df) else df


def _what(task: Any, workload: Any, concurrency: Any, rate: Any, stage: Any) -> str:
    """A compared value's place: the task, or the workload and its load (a closed loop's
    requests in flight, a rate point's offered rate and client cap), or the capacity."""
    if isinstance(task, str) and task:
        return task
    if not isinstance(workload, str) or not workload:
        return ""
    if stage == "capacity":
        return f"{workload} capacity at SLO"
    if pd.isna(concurrency):
        return workload
    if rate is None or pd.isna(rate) or math.isinf(float(rate)):
        return f"{workload} c{int(concurrency)}"
    return f"{workload} {float(rate):g} req/s (cap {int(concurrency)})"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display table of a comparison: one row per compared value, fixed columns."""
    if df.empty:
        return pd.DataFrame(columns=["variant", "what", "metric", "A", "B", "change",
                                     "interval", "regression", "note"])
    what = [_what(t, w, c, r, st) for t, w, c, r, st in zip(
        df["task"], df["workload"], df["concurrency"], df["request_rate"], df["stage"],
        strict=True)]
    metric = [m if s in ("value", "status") or pd.isna(s) else f"{m} {s}"
              for m, s in zip(df["metric"], df["stat"], strict=True)]

    def num(x: float) -> str:
        return "" if x is None or pd.isna(x) else f"{x:.4g}"

    change = [("" if pd.isna(c) else f"{c:+.4g}" + ("" if pd.isna(p) else f" ({p:+.1f}%)"))
              for c, p in zip(df["change"], df["change_pct"], strict=True)]
    interval = ["" if pd.isna(lo) else f"[{lo:+.4g}, {hi:+.4g}]"
                for lo, hi in zip(df["ci_low"], df["ci_high"], strict=True)]
    return pd.DataFrame({
        "variant": df["variant"], "what": what, "metric": metric,
        "A": [num(x) for x in df["value_a"]], "B": [num(x) for x in df["value_b"]],
        "change": change, "interval": interval,
        "regression": ["REGRESSION" if r else "" for r in df["regression"]],
        "note": df["note"].fillna(""),
    })


def format_comparison(df: pd.DataFrame, run_a: str, run_b: str) -> str:
    """The printed form: a header line, the table and a verdict line."""
    n_reg = int(df["regression"].sum()) if len(df) else 0
    head = (f"compare {run_a} (A) -> {run_b} (B): change = B - A; accuracy intervals: paired "
            "bootstrap over documents; latency: bootstrap of the percentile over requests (a rate "
            "point's steady-state window); capacity at SLO: difference of the runs' bootstrap "
            "draws")
    if df.empty:
        return head + "\nnothing in common to compare"
    with pd.option_context("display.max_rows", 500, "display.width", 200,
                           "display.max_colwidth", 70):
        body = summary_table(df).to_string(index=False)
    verdict = (f"{n_reg} regression(s) beyond noise" if n_reg else
               f"no regression beyond noise ({len(df)} values compared)")
    return f"{head}\n{body}\n{verdict}"


def previous_run(run_path: str | os.PathLike[str]) -> Path | None:
    """The most recent earlier run of the same study under the same output root.

    Runs are ordered by the creation time in their ``env.json`` (the run id where there is
    none); only runs with records count.
    """
    here = Path(run_path).resolve()

    def created(p: Path) -> str:
        try:
            return str(read_json(p / "env.json").get("created_utc") or "")
        except (OSError, ValueError):
            return ""

    mine = created(here)
    candidates = []
    for p in here.parent.iterdir():
        if p == here or not (p / "config.yaml").is_file() or not (p / "records.parquet").is_file():
            continue
        key = created(p)
        if (key, p.name) < (mine, here.name):
            candidates.append(((key, p.name), p))
    return max(candidates)[1] if candidates else None


def comparison_with_previous(run_path: str | os.PathLike[str], **options: Any
                             ) -> tuple[str | None, pd.DataFrame]:
    """(previous run id, comparison) for a run; ``(None, empty)`` when there is no earlier run.

    An earlier run that cannot be read is reported by its id with an empty comparison.
    """
    prev = previous_run(run_path)
    if prev is None:
        return None, pd.DataFrame(columns=COLUMNS)
    try:
        return prev.name, compare_runs(prev, run_path, **options)
    except (EvalkitError, OSError, ValueError) as exc:
        return f"{prev.name} (unreadable: {exc})", pd.DataFrame(columns=COLUMNS)

