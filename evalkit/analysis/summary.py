"""The cross-study answer page: which scheme for which workload, from several runs.

:func:`load` opens runs (each as the :class:`evalkit.analysis.report.Report` its own report is built
from); the functions below turn them into the page's parts: a recommendation per workload
regime across model shapes, the gains table per run x comparison x regime, quality deltas
where a real model was measured, and the list of runs with a one-line verdict each. Only
valid points count (invalid ones are counted and named). ``evalkit summary`` renders
notebooks/05_summary.ipynb, which calls these, to one HTML page.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.analysis import compare as cmp
from evalkit.analysis import decision as dc
from evalkit.analysis import report as rp
from evalkit.analysis import verdicts as vd
from evalkit.analysis.lineage import superseded_by
from evalkit.analysis.load import RANDOM_WEIGHTS, load_report
from evalkit.analysis.quality import quality_per_variant
from evalkit.core.errors import RunDirError, StageError
from evalkit.core.io import atomic_write_text
from evalkit.core.notebooks import NOTEBOOK_DIR, NotebookFailed, execute_notebook, render_html
from evalkit.core.run import REPORT_HTML, Run, list_runs, open_run
from evalkit.metrics import points as pts


@dataclass
class RunSummary:
    run: Run
    report: rp.Report
    real_weights: bool
    #: (successor run, why) when the output root's supersedes.yaml replaces this run
    superseded: tuple[str, str] | None = None

    @property
    def current(self) -> bool:
        """Not superseded: its points may answer."""
        return self.superseded is None

    @property
    def label(self) -> str:
        return f"{self.report.study}/{self.run.run_id}"

    @property
    def shape(self) -> str:
        return f"{self.report.model} ({'real weights' if self.real_weights else RANDOM_WEIGHTS})"


def find_runs(paths: list[str | os.PathLike[str]]) -> list[Run]:
    """Runs named by their directories, or every run under an output root."""
    out: list[Run] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            out.append(open_run(p))
        elif p.is_dir():
            out += list_runs(p)
        else:
            raise RunDirError(f"{p}: neither a run directory (no config.yaml) nor an output root")
    if not out:
        raise RunDirError(f"no runs under {', '.join(map(str, paths))}")
    return sorted(out, key=lambda r: (r.study, r.run_id))


def load(paths: list[str | os.PathLike[str]]) -> list[RunSummary]:
    """Open every run and build its report data (records, per-request samples, caveats)."""
    runs = []
    for run in find_runs(paths):
        cfg = run.config()
        rep = load_report(cfg, run)
        runs.append(RunSummary(run, rep, rep.real_weights, superseded_by(run.path)))
    return runs


def verdict_card(runs: list[RunSummary], page: Path, title: str,
                 repeated: pd.DataFrame | None = None) -> dc.Card:
    """The verdict card over the runs (:func:`evalkit.analysis.decision.build_card`), each
    cell linked to its run's report relative to ``page``; superseded runs never decide.
    ``repeated``: :func:`repeats` of the same runs, for the capacity cells' notes."""
    entries = []
    for s in runs:
        rep = s.run.path / REPORT_HTML
        link = Path(os.path.relpath(rep, page.parent)).as_posix() if rep.is_file() else ""
        entries.append(dc.RunEntry(s.report, s.label, s.shape, link,
                                   s.superseded[0] if s.superseded else None))
    return dc.build_card(entries, title, repeated)


def one_line(rep: rp.Report) -> str:
    """A run's verdict in one line, for the index and the runs table."""
    pairs = rep.comparisons()
    ref, base = rep.reference, rep.base
    # every comparison against the study's reference (else base), not only the first
    pairs = [(v, r) for v, r in pairs if not (r == base and ref not in (None, base))] or pairs
    if pairs:
        out = []
        for variant, ref in pairs:
            if variant in rep.substituted:
                out.append(f"{variant} vs {ref}: vLLM ran {variant} with another scheme's "
                           "kernel; not its scheme's figures")
                continue
            g = rep.gains(variant, ref)
            valid = g.drop_duplicates(["mode", "workload", "concurrency"])
            n_ok, n = int(valid["valid"].sum()), len(valid)
            if n_ok == 0:
                out.append(f"{variant} vs {ref}: all {n} shared latency points invalid; no "
                           "speed verdict")
                continue
            parts = "; ".join(vd.metric_phrase(g, m) for m in ("ttft_ms", "e2el_ms"))
            out.append(f"{variant} vs {ref}, {n_ok} of {n} points valid: {parts}")
        return " · ".join(out)
    q = quality_per_variant(rep.records)
    if len(q):
        return "quality only: " + "; ".join(
            f"{r.variant} {r.quality_delta * 100:+.1f} points [{r.quality_ci_low * 100:+.1f}, "
            f"{r.quality_ci_high * 100:+.1f}]" for r in q.itertuples())
    return "no comparison measured"


def _comparisons(s: RunSummary) -> list[tuple[str, str]]:
    """The run's comparisons the page speaks of: against the study's chosen reference where
    it has one, else against base."""
    ref, base = s.report.reference, s.report.base
    return [(v, r) for v, r in s.report.comparisons()
            if not (r == base and ref not in (None, base))]


def comparison_rows(runs: list[RunSummary]) -> pd.DataFrame:
    """Per run x comparison x regime: the regime table of :func:`evalkit.analysis.verdicts`, with the
    run, model shape, hardware and the trials and hosts behind it, and ``excluded``: why none of
    the comparison's points decides (:func:`evalkit.analysis.decision.comparison_exclusion`;
    empty when they may)."""
    frames = []
    for s in runs:
        if not s.current:
            continue
        for variant, ref in _comparisons(s):
            excluded = dc.comparison_exclusion(s.report, variant, ref)
            g = s.report.gains(variant, ref)
            t = vd.regime_table(g, variant, ref)
            if t.empty:
                continue
            v = g[g["valid"]]
            trials = v.groupby("regime")["trials"].min()
            t.insert(0, "comparison", f"{variant} vs {ref}")
            t.insert(0, "hardware", s.report.hardware)
            t.insert(0, "model", s.shape)
            t.insert(0, "run", s.label)
            t["min_trials"] = t["regime"].map(trials).fillna(0).astype(int)
            t["excluded"] = excluded
            frames.append(t)
    cols = ["run", "model", "hardware", "comparison", *vd.REGIME_COLUMNS, "min_trials",
            "excluded"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def gain_ranges(runs: list[RunSummary]) -> pd.DataFrame:
    """For the forest plot: comparison (with model), regime, metric, the deciding points'
    gains and the span of their 95% intervals (``ci_low``: lowest interval end, ``ci_high``:
    highest)."""
    rows = []
    for s in runs:
        if not s.current:
            continue
        for variant, ref in _comparisons(s):
            if dc.comparison_exclusion(s.report, variant, ref):
                continue
            g = s.report.gains(variant, ref)
            g = g[g["valid"] & (g["trials"] > 1) & g["metric"].isin(["ttft_ms", "tpot_ms"])
                  & g["gain_pct"].notna()]
            for (reg, metric), x in g.groupby(["regime", "metric"], sort=False):
                rows.append({"comparison": f"{variant} vs {ref} · {s.report.model} · {s.label}",
                             "regime": reg, "metric": metric, "gains": list(x["gain_pct"]),
                             "ci_low": float(x["ci_low_pct"].min()),
                             "ci_high": float(x["ci_high_pct"].max())})
    df = pd.DataFrame(rows, columns=["comparison", "regime", "metric", "gains", "ci_low",
                                     "ci_high"])
    order = {r: i for i, r in enumerate(pts.REGIMES)}
    # grouped by regime, then comparison
    return df.sort_values(["regime", "comparison"], key=lambda c: c.map(order)
                          if c.name == "regime" else c, kind="stable").reset_index(drop=True)


#: Settings that decide where a study measures or how it is scheduled, not what a point
#: measures: left out when two runs' setups are matched (the points are matched by their own
#: keys, and capacity does not depend on which rates bracketed it).
_SCHEDULE = {"latency": ("concurrency", "batch_sizes", "request_rate", "modes"),
             "traffic": ("rates", "num_rates", "headroom", "extend", "refine"),
             "engine": ("parallel_starts", "startup_timeout_s")}

REPEAT_COLUMNS = ["variant", "workload", "concurrency", "metric", "run_a", "value_a", "run_b",
                  "value_b", "change_pct", "ci_low_pct", "ci_high_pct", "beyond", "unit"]


def measurement_setups(s: RunSummary) -> dict[str, str]:
    """Per variant of run ``s``, what its latency measurements depend on, as a canonical
    string: the model, the variant and its quantization settings, the engine, the latency
    settings (workloads, prompts, trials, warm-ups, seed, the traffic's window and client
    cap), the SLO, whether the weights are real and the GPU model. Two runs with equal
    setups for a variant measured the same thing in different sittings."""
    d = s.run.config().model_dump(mode="json")
    lat = {k: v for k, v in d["latency"].items() if k not in _SCHEDULE["latency"]}
    if lat.get("traffic"):
        lat["traffic"] = {k: v for k, v in lat["traffic"].items()
                          if k not in _SCHEDULE["traffic"]}
    common = dict(model=d["model"], quantize=d.get("quantize"),
                  engine={k: v for k, v in d["engine"].items()
                          if k not in _SCHEDULE["engine"]},
                  latency=lat, slo=d["report"]["slo"], real_weights=s.real_weights,
                  hardware=s.report.hardware)
    return {str(v["name"]): json.dumps({**common, "variant": v}, sort_keys=True, default=str)
            for v in d["variants"]}


def repeats(runs: list[RunSummary], *, resamples: int = 1000) -> pd.DataFrame:
    """The same measurement made in two sittings: every variant that current runs measured
    with equal :func:`measurement_setups`, each later run against the one before it (by
    creation time), compared by :func:`evalkit.analysis.compare.compare` (once per pair of
    runs) -- capacity at the SLO per GPU (the difference of the two runs' bootstrap draws)
    and the closed-loop points' p50 TTFT and TPOT (bootstrap over both runs' requests).
    ``beyond``: the change's interval excludes 0, so the number moved between sittings by
    more than either run's own interval allows. Columns :data:`REPEAT_COLUMNS`
    (``concurrency``: a closed-loop point's requests in flight, NA for capacity), by
    variant; changes in % of the earlier run."""
    groups: dict[tuple[str, str], list[RunSummary]] = {}
    for s in runs:
        if s.current:
            for variant, setup in measurement_setups(s).items():
                groups.setdefault((variant, setup), []).append(s)
    # the variants each pair of runs (earlier, later) measured alike
    pairs: dict[tuple[str, str], tuple[RunSummary, RunSummary, list[str]]] = {}
    for (variant, _), same in sorted(groups.items(), key=lambda kv: kv[0][0]):
        same = sorted(same, key=lambda x: (str(x.report.env.get("created_utc") or ""),
                                           x.label))
        for a, b in zip(same, same[1:], strict=False):
            pairs.setdefault((a.label, b.label), (a, b, []))[2].append(variant)
    rows = []
    data: dict[str, cmp.RunData] = {}  # a run between two others is in two pairs
    for a, b, variants in pairs.values():
        for x in (a, b):
            if x.label not in data:
                data[x.label] = cmp.load_run_data(x.run.path)
        df = cmp.compare(data[a.label], data[b.label], resamples=resamples)
        closed = df["request_rate"].astype(float) == math.inf
        df = df[df["variant"].isin(variants) & (
            (df["stage"] == "capacity") | ((df["stage"] == "latency") & closed
                                           & df["metric"].isin(["ttft_ms", "tpot_ms"])
                                           & (df["stat"] == "p50")))]
        for _, r in df.iterrows():
            base = r["value_a"]
            rows.append(dict(
                variant=r["variant"], workload=r["workload"],
                concurrency=None if r["stage"] == "capacity" else r["concurrency"],
                metric=r["metric"], run_a=a.label, value_a=base, run_b=b.label,
                value_b=r["value_b"], change_pct=r["change_pct"],
                ci_low_pct=r["ci_low"] / abs(base) * 100,
                ci_high_pct=r["ci_high"] / abs(base) * 100,
                beyond=bool(r["ci_low"] > 0 or r["ci_high"] < 0), unit=r["unit"]))
    out = pd.DataFrame(rows, columns=REPEAT_COLUMNS)
    out["concurrency"] = out["concurrency"].astype("Int64")
    return out.sort_values("variant", kind="stable", ignore_index=True)


def quality_rows(runs: list[RunSummary]) -> pd.DataFrame:
    """Quality delta vs base per scheme, from runs of real weights."""
    rows = []
    for s in runs:
        if not s.real_weights:
            continue
        q = quality_per_variant(s.report.records)
        schemes = s.report.records.drop_duplicates("variant").set_index("variant")["scheme"]
        for r in q.itertuples():
            rows.append({"run": s.label, "model": s.report.model, "variant": r.variant,
                         "scheme": schemes.get(r.variant), "delta_points": r.quality_delta * 100,
                         "ci_low": r.quality_ci_low * 100, "ci_high": r.quality_ci_high * 100,
                         "tasks": r.tasks, "documents": r.docs,
                         "text": vd.quality_text(r.quality_delta * 100, r.quality_ci_low * 100,
                                                 r.quality_ci_high * 100, r.tasks, r.docs,
                                                 s.report.model)})
    return pd.DataFrame(rows, columns=["run", "model", "variant", "scheme", "delta_points",
                                       "ci_low", "ci_high", "tasks", "documents", "text"])


def answer_markdown(runs: list[RunSummary]) -> str:
    """Per regime and comparison: what each model shape's valid points recommend (decided on
    E2E latency), with the points, trials and run behind it, then the quality conditions. A
    run whose points decide nothing (an eager GPU engine, an interrupted latency stage) is
    listed after the others with its facts and the reason, never with a recommendation."""
    table = comparison_rows(runs)
    quality = quality_rows(runs)
    lines = ["## Answer by workload regime", "",
             "Decided per regime on E2E latency at the valid points (offline: the whole "
             "batch's time, which is its tokens/s); a scheme *wins* where its 95% interval "
             "excludes a tie at every point. Speed runs use random weights (valid for speed, "
             "never for quality).", ""]
    if table.empty:
        return "\n".join(lines + ["No run compares two variants at shared latency points."])
    for reg, desc in pts.REGIMES.items():
        r = table[(table["regime"] == reg) & (table["decision"] != "no valid point")]
        if r.empty:
            continue
        lines.append(f"**{reg}** — {desc}:")
        order = r.groupby("comparison")["run"].count().sort_values(ascending=False).index
        for comp in order:
            c = r[r["comparison"] == comp].sort_values(["min_trials", "model"],
                                                        ascending=[False, True])

            def part(row) -> str:
                return f"{row.model.split(' (')[0]} → **{_decision_words(row)}** ({_facts(row)})"

            tried = [part(x) for x in c.itertuples() if not x.excluded and x.min_trials > 1]
            single = [part(x) for x in c.itertuples() if not x.excluded and x.min_trials <= 1]
            aside = [f"{x.model.split(' (')[0]} ({_facts(x)}: {x.excluded})"
                     for x in c.itertuples() if x.excluded]
            parts = [" · ".join(tried)] if tried else []
            if single:
                parts.append("*single-trial points:* " + " · ".join(single))
            if aside:
                parts.append("*not deciding:* " + " · ".join(aside))
            lines.append(f"- `{comp}`: {'; '.join(parts)}")
        lines.append("")
    if len(quality):
        lines += ["**Quality** (real weights; paired delta of the primary metric vs base, mean "
                  "over tasks, 95% interval):", ""]
        lines += [f"- `{r.variant}` ({r.run}): {r.text}" for r in quality.itertuples()]
    else:
        lines += ["**Quality** was not measured on real weights in these runs: a scheme's "
                  "speed gain says nothing about what it costs in accuracy."]
    return "\n".join(lines)


def _facts(row) -> str:
    variant = row.comparison.split(" vs ")[0]
    trials = "single trial" if row.min_trials <= 1 else f"{row.min_trials} trials"
    return (f"{variant} against the reference: E2E {row.e2el_gain}, TTFT {row.ttft_gain}, TPOT "
            f"{row.tpot_gain}; {row.points}, {trials}; {row.hardware}; {row.run}")


def _decision_words(row) -> str:
    variant, ref = row.comparison.split(" vs ")
    d = row.decision
    if d == "depends on load":
        return (f"depends on load ({variant} faster at {row.e2el_faster} point(s), {ref} at "
                f"{row.e2el_slower})")
    if d == "either (level)":
        return "either (level within the intervals)"
    return d


def _partial(rep: rp.Report) -> str:
    """A run whose latency stage was cut off after some variants finished: which decide."""
    if rep.latency_finished is None:
        return ""
    return (f"current; latency stage {rep.stage_states.get('latency')}: only "
            f"{', '.join(rep.latency_finished)} finished and decide")


def runs_table(runs: list[RunSummary], page: Path) -> pd.DataFrame:
    """Each run with its report linked relative to ``page`` and its one-line verdict."""
    rows = []
    for s in runs:
        rep = s.run.path / REPORT_HTML
        link = Path(os.path.relpath(rep, page.parent)).as_posix() if rep.is_file() else ""
        status = (f"superseded by {s.superseded[0]}: {s.superseded[1]}" if s.superseded
                  else dc.run_exclusion(s.report) or _partial(s.report) or "current")
        rows.append({"run": s.label, "model": s.shape, "hardware": s.report.hardware,
                     "started (UTC)": s.report.env.get("created_utc", "?"), "status": status,
                     "verdict": one_line(s.report), "report": link})
    return pd.DataFrame(rows)


def render(paths: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
           progress: bool = False) -> Path:
    """Execute notebooks/05_summary.ipynb over the runs and write its HTML (without code) to
    ``out``, atomically. When the notebook fails, the executed notebook is kept next to
    ``out`` as ``<name>.failed.ipynb`` (it shows where) and ``out`` is left as it was.

    Raises:
        RunDirError: a path is neither a run nor an output root (checked before executing).
        StageError: the notebook raised.
    """
    find_runs(list(paths))  # one clear error before a kernel starts
    out = Path(out).resolve()
    src = NOTEBOOK_DIR / "05_summary.ipynb"
    with tempfile.TemporaryDirectory(prefix="evalkit-summary-") as tmp:
        nb = Path(tmp) / "05_summary.ipynb"
        try:
            execute_notebook(
                src, nb, progress=progress,
                parameters={"runs": [str(Path(p).resolve()) for p in paths], "page": str(out)},
                cwd=tmp)
        except NotebookFailed as exc:
            failed = out.with_suffix(".failed.ipynb")
            failed.write_bytes(nb.read_bytes())
            raise StageError(f"summary notebook failed in cell {exc.exec_count}: {exc.ename}: "
                             f"{(exc.evalue or '').splitlines()[:1]} -- see {failed}") from None
        plain, _ = render_html(nb, Path(tmp))
        return atomic_write_text(out, plain.read_text(encoding="utf-8"))
