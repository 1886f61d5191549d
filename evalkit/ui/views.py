"""Text and tables of the stakeholder report (notebook 04), from a run's records: the report
and its first screen (the later sections are in :mod:`evalkit.ui.sections`).

Pure functions of the :class:`evalkit.analysis.report.Report` that
:func:`evalkit.analysis.load.load_report` builds; the notebook turns the Markdown strings and
DataFrames into cells of the rendered HTML.
"""

from __future__ import annotations

import math

import pandas as pd

from evalkit.analysis import report as rp
from evalkit.analysis import verdicts as vd
from evalkit.analysis.decision import pct_words
from evalkit.analysis.quality import quality_per_variant
from evalkit.analysis.report_figures import gain_label
from evalkit.core.schemes import SCHEMES
from evalkit.metrics import points as pts


def header_markdown(r: rp.Report) -> str:
    """Title and the one line that says what was compared where (the first screen)."""
    variants = r.records.drop_duplicates("variant")[["variant", "scheme"]]
    vlist = ", ".join(
        f"`{v.variant}` ({SCHEMES[v.scheme].label if v.scheme in SCHEMES else v.scheme})"
        for v in variants.itertuples()
    )
    created = r.env.get("created_utc", "?")
    return (f"# {r.study}: quality vs speed of quantized `{r.model}`\n\n"
            f"**Compared:** {vlist} · **Hardware:** {r.hardware} · **Run started:** "
            f"{created} UTC")


def context_markdown(r: rp.Report) -> str:
    """What the study asks, its tasks and workloads, and every caveat."""
    tasks = sorted(r.records.loc[r.records["stage"] == "accuracy", "task"].dropna().unique())
    wls = r.records[(r.records["stage"] == "latency")].drop_duplicates("workload")
    wtxt = ", ".join(f"{w.workload} ({w.input_len}→{w.output_len} tokens)"
                     for w in wls.itertuples() if isinstance(w.workload, str))
    cav = "\n".join(f"- {c}" for c in r.caveats) or "- none recorded"
    return (
        f"## About this run\n\n{r.description}\n\n"
        f"**Accuracy tasks:** {', '.join(tasks) or 'none'}.  \n"
        f"**Latency workloads:** {wtxt or 'none'}.\n\n"
        f"**Caveats**\n\n{cav}\n"
    )


def _quality_texts(r: rp.Report) -> dict[str, str]:
    q = quality_per_variant(r.records)
    return {row.variant: vd.quality_text(row.quality_delta * 100, row.quality_ci_low * 100,
                                         row.quality_ci_high * 100, row.tasks, row.docs, r.model)
            for row in q.itertuples()}


def _num(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3g}"


def _interval(lo: float, hi: float, fmt: str = "{:.3g}") -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f" [{fmt.format(lo)}, {fmt.format(hi)}]"


def _capacity_cell(row: pd.Series, col: str) -> str:
    """Capacity with its interval; censored: at least the top rate, or below the lowest."""
    if row["censored"] == "unjudged":
        return "not established: no rate's trial outlasted the server's fill"
    if row["status"] != "ok":
        return f"{row['status']}: {row['capacity_note']}" if row["capacity_note"] \
            else str(row["status"])
    if row["censored"] == "below":
        return "below the lowest rate"
    if row["censored"] == "above":  # the top rate: its interval says nothing more
        return f"≥ {_num(row[col])}"
    return _num(row[col]) + _interval(row[f"{col}_lo"], row[f"{col}_hi"])


def _gain_cell(row: pd.Series) -> str:
    if row["gain_note"] == "reference":
        return "reference"
    g = row["gain_pct"]
    if math.isnan(g):
        return "n/a"
    interval = _interval(row["gain_lo"], row["gain_hi"], "{:+.0f}%")
    # a censored capacity makes the gain a bound: state the conservative end of its interval
    # (the point ratio of a censored value over the reference's would claim too much)
    if row["gain_note"].startswith("a lower bound") and not math.isnan(row["gain_lo"]):
        return f"≥ {row['gain_lo']:+.0f}%" + interval
    if row["gain_note"].startswith("an upper bound") and not math.isnan(row["gain_hi"]):
        return f"≤ {row['gain_hi']:+.0f}%" + interval
    return f"{g:+.0f}%" + interval


def _scheme(variant: str, scheme: str) -> str:
    label = SCHEMES[scheme].label if scheme in SCHEMES else scheme
    return f"`{variant}` ({label})" if label and label.lower() != variant.lower() else f"`{variant}`"


def capacity_markdown(r: rp.Report) -> str:
    """The capacity-at-SLO table (scheme x traffic mix) and the sentence that defines it, as
    Markdown; empty when the run measured no rate sweep."""
    t = r.capacity()
    if t.empty:
        return ""
    ref = str(t["reference"].iloc[0])
    per_gpu = t["req_s_per_gpu"].notna().any()
    col = "req_s_per_gpu" if per_gpu else "req_s"
    head = ["scheme", "traffic mix",
            "req/s per GPU at SLO [95% CI]" if per_gpu else "req/s at SLO, one engine [95% CI]",
            f"gain vs `{ref}` [95% CI]"]
    cost = t["cost_usd_per_m_tokens"].notna().any()
    if cost:
        head.append("$ per M output tokens [95% CI]")
    head.append("J per output token")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in t.iterrows():
        mix = row["workload"] if row["load"] == "poisson" else f"{row['workload']} ({row['load']})"
        cells = [_scheme(row["variant"], row["scheme"]), mix, _capacity_cell(row, col),
                 _gain_cell(row)]
        if cost:
            # at least the top rate -> at most its cost
            cells.append(("≤ " if row["censored"] == "above" else "")
                         + _num(row["cost_usd_per_m_tokens"])
                         + _interval(row["cost_lo"], row["cost_hi"]))
        cells.append(_num(row["energy_j_per_token"]) if not math.isnan(row["energy_j_per_token"])
                     else row["energy_note"].removeprefix("at the highest rate that met the SLO: ")
                     or "not measured")
        lines.append("| " + " | ".join(cells) + " |")
    loads = sorted(set(t["load"]))
    arrivals = " or ".join("Poisson" if x == "poisson" else f"{x}" for x in loads)
    slo = "; ".join(dict.fromkeys(t["slo"]))
    price = (f" at ${r.cost_per_gpu_hour_usd:g} per GPU-hour" if r.cost_per_gpu_hour_usd
             else "")
    money = (f"; cost per million output tokens at capacity{price}" if cost else
             f"; no cost: no capacity established{price}" if r.cost_per_gpu_hour_usd else
             "; no cost (the study sets no `report.cost_per_gpu_hour_usd`)")
    bounds = []
    if (t["censored"] == "above").any():
        bounds.append("≥: every rate measured met the SLO (the top rate is shown)")
    if (t["censored"] == "unjudged").any():
        bounds.append("not established: every rate that met the SLO ran in trials shorter than "
                      "the server's fill, which show no steady state")
    if (t["gain_note"].str.startswith(("a lower bound", "an upper bound"))).any():
        bounds.append("a gain with ≥/≤ is a bound")
    lines += ["", f"*Capacity at SLO* = the highest sustainable {arrivals} arrival rate"
              f"{' (per GPU)' if per_gpu else ''} whose {slo}; from a rate sweep (requests "
              "arriving at rising offered rates, statistics over each rate's steady-state window); "
              "saturated rates (the queue grew through the window) are not sustainable. "
              f"Gain = (variant / `{ref}` − 1) × 100, 95% interval from paired bootstrap draws"
              f"{money}" + (f"; {'; '.join(bounds)}" if bounds else "") + "."]
    return "\n".join(lines)


def answer_markdown(r: rp.Report) -> str:
    """The first screen's answer: the capacity at SLO per scheme and traffic mix (when the
    run measured rate sweeps), a sentence per comparison over all its points, then, for the
    first comparison, a recommendation per workload regime with its conditions."""
    lines = ["## Answer", ""]
    capacity = capacity_markdown(r)
    if capacity:
        lines += [capacity, ""]
    pairs = r.comparisons()
    quality = _quality_texts(r)
    if not pairs:
        lat = r.points()
        lines.append("No two variants share a measured latency point, so there is no speed "
                     "comparison." + (" Latency points: " + str(len(lat)) if len(lat) else ""))
    for variant, ref in pairs:
        lines += [f"- {vd.pair_sentence(r.gains(variant, ref), variant, ref)}"]
    if pairs:
        variant, ref = pairs[0]
        g = r.gains(variant, ref)
        regs = [reg for reg in pts.REGIMES if (g["regime"] == reg).any()]
        q = {k: quality[k] for k in (variant, ref) if k in quality}
        lines += ["", f"**Which to use, by workload regime** (decided on E2E latency; "
                  f"`{variant}` against `{ref}`):", ""]
        lines += [f"- {vd.recommendation(g, reg, variant, ref, q or None)}" for reg in regs]
        if not q:
            lines += ["", "Quality was not measured in this run"
                      + (" (random weights)." if "random weights" in " ".join(r.caveats)
                         else ".")]
    for v, text in quality.items():
        if not any(v in p for p in pairs):
            lines.append(f"- Quality of `{v}`: {text}.")
    lines += ["", "Regimes: " + "; ".join(f"*{k}*: {d}" for k, d in pts.REGIMES.items()) + "."]
    return "\n".join(lines)


RATE_LABELS = {
    "variant": "variant", "workload": "traffic mix", "load_text": "load",
    "offered_rate_req_s": "offered req/s", "arrival_rate_req_s": "arrivals req/s (window)",
    "achieved_rate_req_s": "achieved req/s", "failed_requests": "failed requests",
    "window_requests": "window requests", "saturated": "saturated",
    "ttft_p50_ms": "TTFT p50 (ms)", "ttft_p90_ms": "TTFT p90 (ms)", "ttft_p90_lo": "TTFT p90 low",
    "ttft_p90_hi": "TTFT p90 high", "tpot_p50_ms": "TPOT p50 (ms)",
    "tpot_p90_ms": "TPOT p90 (ms)", "tpot_p90_lo": "TPOT p90 low",
    "tpot_p90_hi": "TPOT p90 high", "output_throughput_tok_s": "output tok/s",
    "energy_j_per_output_token": "J per output token", "trials": "trials",
    "disclosure": "marks",
}


def rate_table(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Every rate point: offered against achieved rate, failed requests, saturation and the
    p90 latencies the SLO is checked on, with their intervals."""
    t = r.rates().copy()
    if t.empty:
        return "No rate sweep was measured in this run.", pd.DataFrame()
    t["saturated"] = ["yes: " + n if s and n else "yes" if s else
                      "no" if judged else "not judged (trial shorter than the server's fill)"
                      for s, n, judged in zip(t["saturated"], t["saturated_note"],
                                              t["flow_judged"], strict=True)]
    t["disclosure"] = [f"{st.upper()}: {n}" if st != "ok" else "" for st, n in
                       zip(t["status"], t["note"], strict=True)]
    windows = "; ".join(dict.fromkeys(n for n in t["window_note"] if n))
    return (f"{len(t)} rate points (requests arriving at the offered rate; every figure from "
            "the steady-state window of the trial"
            + (f": {windows}" if windows else "") + "). *achieved*: completions per second in "
            "the window, below the arrivals when the queue grows; *saturated*: not "
            "sustainable, its latencies depend on how long the trial ran; low/high: 95% "
            "bootstrap interval.", t[[c for c in RATE_LABELS if c in t]].rename(
                columns=RATE_LABELS))


REGIME_LABELS = {"regime": "regime", "points": "points", "ttft_gain": "TTFT (p50)",
                 "tpot_gain": "TPOT (p50)", "e2el_gain": "E2E latency (p50)",
                 "throughput_gain": "output tokens/s",
                 "e2el_faster": "E2E faster at", "e2el_slower": "E2E slower at",
                 "e2el_level": "E2E level at", "decision": "faster on E2E"}


def regime_table(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """The first comparison's gains by regime (ranges over valid points)."""
    pairs = r.comparisons()
    if not pairs:
        return "", pd.DataFrame()
    variant, ref = pairs[0]
    t = vd.regime_table(r.gains(variant, ref), variant, ref)
    return (f"**By regime: `{variant}` against `{ref}`** (ranges over the valid points of "
            f"each regime: how much faster or slower `{variant}` is)",
            t.rename(columns=REGIME_LABELS))


HEADLINE_LABELS = {
    "variant": "variant", "scheme": "scheme", "ttft_ms": "TTFT p50 (ms)",
    "tpot_ms": "TPOT p50 (ms)", "itl_ms": "ITL p50 (ms)", "e2el_ms": "E2E p50 (ms)",
    "quality_delta": "quality Δ vs base (points)", "quality_ci_low": "Δ 95% CI low",
    "quality_ci_high": "Δ 95% CI high", "tasks": "tasks", "docs": "documents",
    "latency_status": "latency status",
}


def headline_markdown(r: rp.Report) -> str:
    if r.workload is None:
        return "## One point in detail\n\nNo latency point was measured; the table shows quality only."
    have = set(r.records.loc[r.records["stage"] == "latency", "variant"])
    refs = [x for x in (r.base, r.reference) if x and x in have]
    against = (" and ".join(f"`{x}`" for x in dict.fromkeys(refs)) or "no measured reference")
    where = "concurrency" if r.mode == "server" else "offline batch size"
    quality = (" Quality delta is the mean over tasks of the primary metric's paired delta vs "
               "base (points), with its 95% interval." if (r.records["stage"] == "accuracy"
                                                          ).any() else "")
    return (
        f"## One point in detail\n\nAt workload **{r.workload}**, {where} **{r.concurrency}**, on "
        f"{r.hardware}. Gains are against {against}: (reference − variant) / reference × 100; "
        "positive = faster, negative = slower. Latencies are p50 over requests (ms)." + quality
    )


def headline_table(r: rp.Report) -> pd.DataFrame:
    t = r.table().copy()
    for col in ("quality_delta", "quality_ci_low", "quality_ci_high"):
        if col in t:
            t[col] = t[col] * 100
    keep = ["variant", "scheme"] + [c for c in t.columns if c in (
        "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "quality_delta", "quality_ci_low",
        "quality_ci_high", "tasks", "docs") or "_gain_vs_" in c] + ["latency_status"]
    if not (r.records["stage"] == "accuracy").any():  # speed-only study: no quality columns
        keep = [c for c in keep if not c.startswith("quality_") and c not in ("tasks", "docs")]
    t = t[[c for c in keep if c in t.columns]]
    # a gain against a variant with no latency here (e.g. no base in a speed study) is no data
    t = t.drop(columns=[c for c in t.columns if "_gain_vs_" in c and t[c].isna().all()])
    labels = {}
    for c in [c for c in t.columns if "_gain_vs_" in c]:
        # in words, never a negative reduction: "23 % faster", "17 % slower"
        metric, _, ref = c.removesuffix("_pct").partition("_gain_vs_")
        t[c] = ["reference" if v == ref else "n/a" if pd.isna(g) else pct_words(g)
                for v, g in zip(t["variant"], t[c], strict=True)]
        labels[c] = f"{metric.upper()} vs {ref}"
    return t.rename(columns={c: HEADLINE_LABELS.get(c) or labels.get(c) or gain_label(c)
                             for c in t.columns})
