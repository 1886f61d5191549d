"""lm-eval's results as evalkit figures: metric summaries, per-document scores, the records of
one unit, and the paired records of a variant against base.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.core.config import StudyConfig
from evalkit.core.errors import EvalkitError
from evalkit.core.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from evalkit.core.specs import Variant
from evalkit.metrics import quality, stats
from evalkit.metrics.accuracy import metric_label
from evalkit.stages.accuracy.settings import SCORE_COLUMNS, accuracy_spec, metric_unit


@dataclass
class MetricSummary:
    """One metric of one task as lm-eval reports it."""

    name: str
    filter: str
    value: float
    stderr: float
    higher_is_better: bool | None
    n: int | None

    @property
    def label(self) -> str:
        return metric_label(self.name, self.filter)


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def summarize(results: Mapping[str, Any], lm_task: str) -> list[MetricSummary]:
    """Metrics of ``lm_task`` (a task or a group) from lm-eval's results dict."""
    res = results.get("results", {}).get(lm_task)
    if res is None:
        raise EvalkitError(f"lm-eval results have no entry for task {lm_task}")
    hib = results.get("higher_is_better", {}).get(lm_task, {}) or {}
    nsamp = results.get("n-samples", {}).get(lm_task, {}) or {}
    n = nsamp.get("effective")
    out = []
    for key, val in res.items():
        if "," not in key:
            continue
        name, filt = key.split(",", 1)
        if name.endswith("_stderr"):
            continue
        h = hib.get(name)
        out.append(MetricSummary(
            name=name, filter=filt, value=_num(val),
            stderr=_num(res.get(f"{name}_stderr,{filt}")),
            higher_is_better=None if h is None else bool(h), n=None if n is None else int(n),
        ))
    return sorted(out, key=lambda m: (m.filter, m.name))


def per_doc_scores(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Per-document scalar scores from lm-eval's logged samples (all subtasks, filters).

    Returns:
        DataFrame with :data:`SCORE_COLUMNS`; only numeric per-sample values are kept
        (corpus-level metrics such as BLEU log tuples, which are not per-document scores).
    """
    rows = []
    for subtask, items in samples.items():
        for s in items:
            filt = s.get("filter", "none")
            for name in s.get("metrics", []):
                v = s.get(name)
                if isinstance(v, bool) or isinstance(v, int | float):
                    rows.append((subtask, int(s["doc_id"]), str(s.get("doc_hash", "")), filt,
                                 name, float(v)))
    df = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    return df.sort_values(["metric", "filter", "subtask", "doc_id"], ignore_index=True)


def scores_reproduce(scores: pd.DataFrame, m: MetricSummary) -> bool:
    """True when the mean of the per-document scores equals lm-eval's value.

    Only then is the per-document score the thing lm-eval aggregates (a mean), and a
    bootstrap of its mean a bootstrap of the reported metric.
    """
    s = scores[(scores.metric == m.name) & (scores["filter"] == m.filter)]["score"]
    if s.empty or math.isnan(m.value):
        return False
    return bool(abs(float(s.mean()) - m.value) <= 1e-9 * max(1.0, abs(m.value)))


@dataclass
class UnitResult:
    """A finished (variant, task) evaluation."""

    variant: str
    task: str
    backend: str
    results: dict
    samples_path: Path
    scores: pd.DataFrame
    seconds: float
    notes: list[str] = field(default_factory=list)


def samples_jsonl(samples: Mapping[str, Sequence[Any]]) -> str:
    lines = []
    for subtask, items in samples.items():
        for s in items:
            lines.append(json.dumps({"subtask": subtask, **s}, sort_keys=True, default=str))
    return "\n".join(lines) + ("\n" if lines else "")


def read_samples_jsonl(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                s = json.loads(line)
                out.setdefault(s.pop("subtask"), []).append(s)
    return out


def write_raw(raw: Path, results: dict, samples_text: str, scores: pd.DataFrame) -> None:
    atomic_write_json(raw / "results.json", results)
    atomic_write_text(raw / "samples.jsonl", samples_text)
    atomic_write_bytes(raw / "scores.parquet", scores.to_parquet(index=False))


def finished_unit(variant: str, task: str, raw: Path, done: Mapping[str, Any]) -> UnitResult:
    """A finished (variant, task) read back from its raw files and its unit marker."""
    return UnitResult(variant, task, done["backend"], read_json(raw / "results.json"),
                      raw / "samples.jsonl", pd.read_parquet(raw / "scores.parquet"),
                      float(done.get("seconds", math.nan)), list(done.get("notes", [])))


def variant_fields(cfg: StudyConfig, v: Variant) -> dict[str, Any]:
    return {"variant": v.name, "scheme": v.scheme, "method": v.method}


def unit_records(u: UnitResult, lm_task: str, hardware: str) -> list[dict[str, Any]]:
    """value and stderr rows of one finished (variant, task)."""
    rows = []
    note = "; ".join(u.notes)
    for m in summarize(u.results, lm_task):
        s = u.scores[(u.scores.metric == m.name) & (u.scores["filter"] == m.filter)]["score"]
        binary = stats.is_binary(s.to_numpy())
        unit = metric_unit(m.name, binary)
        extra = "" if m.filter == "none" else f"lm-eval filter {m.filter}"
        for stat_name, val in (("value", m.value), ("stderr", m.stderr)):
            rows.append({
                "task": u.task, "metric": m.label, "stat": stat_name, "value": val,
                "unit": unit, "higher_is_better": m.higher_is_better, "n": m.n,
                "backend": u.backend, "hardware": hardware,
                "status": "ok", "note": "; ".join(x for x in (note, extra) if x) or None,
            })
    return rows


def paired_records(base: UnitResult, var: UnitResult, lm_task: str, cfg: StudyConfig,
                   hardware: str) -> list[dict[str, Any]]:
    """delta, ci_low, ci_high, recovery_pct and p_value rows of ``var`` against ``base``; for
    0/1 metrics also the flips (:func:`flip_rows`).

    Documents are matched by (subtask, doc_id) and must be the same set with the same
    document hashes in both runs.

    Raises:
        EvalkitError: the two evaluations did not score the same documents.
    """
    boot = accuracy_spec(cfg).bootstrap
    bsum = {metric.label: metric for metric in summarize(base.results, lm_task)}
    rows = []
    for metric in summarize(var.results, lm_task):
        base_metric = bsum.get(metric.label)
        if base_metric is None:
            continue
        hib = metric.higher_is_better if metric.higher_is_better is not None else base_metric.higher_is_better
        common = {"task": var.task, "metric": metric.label, "higher_is_better": hib, "n": metric.n,
                  "backend": var.backend, "hardware": hardware,
                  "status": "ok"}
        rec_val = stats.recovery_pct(base_metric.value, metric.value, hib if hib is not None else True)
        notes = [*var.notes, f"vs {base.variant} ({base.backend})"]
        sel = ["subtask", "doc_id", "doc_hash", "score"]
        bs = base.scores[(base.scores.metric == metric.name) & (base.scores["filter"] == metric.filter)][sel]
        vs = var.scores[(var.scores.metric == metric.name) & (var.scores["filter"] == metric.filter)][sel]
        bkeys = set(zip(bs.subtask, bs.doc_id, strict=True))
        vkeys = set(zip(vs.subtask, vs.doc_id, strict=True))
        if bkeys != vkeys:
            raise EvalkitError(
                f"accuracy {var.task}/{metric.label}: {var.variant} and {base.variant} scored "
                f"different documents ({len(bkeys ^ vkeys)} differ); paired statistics need "
                "identical limit/settings"
            )
        merged = bs.merge(vs, on=["subtask", "doc_id"], suffixes=("_b", "_v"))
        if (merged.doc_hash_b != merged.doc_hash_v).any():
            raise EvalkitError(
                f"accuracy {var.task}: {var.variant} and {base.variant} have different document "
                "contents under the same doc_id (task data changed between evaluations)"
            )
        unit = metric_unit(metric.name, stats.is_binary(merged.score_b.to_numpy()))
        paired_ok = scores_reproduce(base.scores, base_metric) and scores_reproduce(var.scores, metric)
        if paired_ok:
            bb, vv = merged.score_b.to_numpy(), merged.score_v.to_numpy()
            br = stats.paired_bootstrap(bb, vv, resamples=boot.resamples,
                                        confidence=boot.confidence, seed=boot.seed)
            binary = stats.is_binary(bb) and stats.is_binary(vv)
            if binary:
                mc = stats.mcnemar(bb, vv)
                p_value = mc.p_value
                notes.append(f"McNemar {'exact' if mc.exact else 'chi2'} b={mc.b} c={mc.c}")
            else:
                pt = stats.paired_permutation_test(bb, vv, resamples=boot.resamples,
                                                   seed=boot.seed)
                p_value = pt.p_value
                notes.append("paired sign-flip permutation test")
            notes.append(f"paired bootstrap {boot.resamples}x, {boot.confidence:.0%}")
            vals = {"delta": br.delta, "ci_low": br.ci_low, "ci_high": br.ci_high, "p_value": p_value}
        else:
            binary = False
            notes.append("no per-document mean score for this metric: delta from lm-eval "
                         "values, no interval or test")
            vals = {"delta": metric.value - base_metric.value, "ci_low": math.nan, "ci_high": math.nan,
                    "p_value": math.nan}
        note = "; ".join(notes)
        for stat_name in ("delta", "ci_low", "ci_high"):
            rows.append({**common, "stat": stat_name, "value": vals[stat_name], "unit": unit, "note": note})
        rows.append({**common, "stat": "recovery_pct", "value": rec_val, "unit": "%",
                     "note": note})
        rows.append({**common, "stat": "p_value", "value": vals["p_value"],
                     "unit": "probability", "higher_is_better": None, "note": note})
        if binary:
            rows += flip_rows(quality.flips(bb, vv, boot.confidence), common, base.variant,
                              carried=var.notes)
    return rows


def flip_rows(f: quality.FlipResult, common: Mapping[str, Any], base_name: str,
              carried: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Flip records of one metric: ``c2w`` and ``w2c`` (counts), ``flip_rate``,
    ``c2w_rate``, ``w2c_rate`` (fractions of the documents) and each rate's Wilson interval
    (``<rate>_ci_low``, ``<rate>_ci_high``). A flip in either direction is a divergence from
    the base, so no rate has a better direction except ``c2w_rate`` (lower is better).
    ``carried``: the variant's own notes (e.g. the backend it fell back to), carried with
    its numbers."""
    note = "; ".join([*carried, (f"flips vs {base_name} on {f.n} paired documents: {f.c2w} "
                                  f"correct->wrong, {f.w2c} wrong->correct; Wilson intervals")])
    rows = [{**common, "stat": s, "value": float(k), "unit": "count", "higher_is_better": None,
             "note": note} for s, k in (("c2w", f.c2w), ("w2c", f.w2c))]
    for name, e, hib in (("flip_rate", f.flip_rate, None), ("c2w_rate", f.c2w_rate, False),
                         ("w2c_rate", f.w2c_rate, None)):
        for suffix, val in (("", e.value), ("_ci_low", e.ci_low), ("_ci_high", e.ci_high)):
            rows.append({**common, "stat": name + suffix, "value": val, "unit": "fraction",
                         "higher_is_better": hib, "note": note})
    return rows
