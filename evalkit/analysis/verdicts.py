"""Plain-language answers from point-by-point gains: a sentence over all points, a table per
workload regime, and a recommendation per regime with its conditions.

Input is :func:`evalkit.metrics.points.point_gains` of one variant against a reference; only valid
points count (invalid ones are named, never used). Pure functions returning text and
DataFrames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from evalkit.metrics.points import REGIMES

NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2el_ms": "E2E latency",
         "output_throughput_tok_s": "output tokens/s"}
REGIME_COLUMNS = ["regime", "points", "ttft_gain", "tpot_gain", "e2el_gain",
                  "throughput_gain", "e2el_faster", "e2el_slower", "e2el_level", "decision"]


def _span(x: pd.Series) -> str:
    lo, hi = float(x.min()), float(x.max())
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}% to {hi:.0f}%"


def span_words(x: pd.Series, faster: str = "faster", slower: str = "slower") -> str:
    """A range of reductions in words, never a negative reduction: ``4% to 17% faster``,
    ``14% to 18% slower`` or ``18% slower to 25% faster``."""
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0:
        return (f"{lo:.0f}% {faster}" if round(lo) == round(hi)
                else f"{lo:.0f}% to {hi:.0f}% {faster}")
    if hi < 0:
        return (f"{-hi:.0f}% {slower}" if round(lo) == round(hi)
                else f"{-hi:.0f}% to {-lo:.0f}% {slower}")
    return f"{-lo:.0f}% {slower} to {hi:.0f}% {faster}"


def metric_phrase(g: pd.DataFrame, metric: str) -> str:
    """How one metric went over the valid points: e.g. ``TTFT lower at all 24 points (23% to
    43%)`` or ``TPOT lower at 7 (2% to 25%), higher at 10 (4% to 18%), level at 7``."""
    m = g[(g["metric"] == metric) & g["valid"] & g["gain_pct"].notna()]
    name = NAMES[metric]
    if m.empty:
        return f"{name} not measured"
    better, worse = ("higher", "lower") if metric == "output_throughput_tok_s" else ("lower",
                                                                                    "higher")
    up = m[m["direction"].str.startswith("faster")]
    down = m[m["direction"].str.startswith("slower")]
    level = m[m["direction"] == "level"]
    every = f"all {len(m)} points" if len(m) > 1 else "the one point"
    if len(up) == len(m):
        return f"{name} {better} at {every} ({_span(up['gain_pct'])})"
    if len(down) == len(m):
        return f"{name} {worse} at {every} ({_span(-down['gain_pct'])})"
    if len(level) == len(m):
        return f"{name} level within its interval at {every}"
    parts = []
    if len(up):
        parts.append(f"{better} at {len(up)} ({_span(up['gain_pct'])})")
    if len(down):
        parts.append(f"{worse} at {len(down)} ({_span(-down['gain_pct'])})")
    if len(level):
        parts.append(f"level within its interval at {len(level)}")
    return f"{name} " + ", ".join(parts)


def pair_sentence(g: pd.DataFrame, variant: str, reference: str) -> str:
    """One sentence over every point the two variants share, e.g. "`w4a8_fp8` against
    `w4a16`, over 24 valid points (16 server, 8 offline): TTFT lower at all 24 points ..."."""
    if g.empty:
        return f"`{variant}` against `{reference}`: no latency point measured for both."
    pts = g.drop_duplicates(["mode", "workload", "concurrency"])
    valid = pts[pts["valid"]]
    n_bad = len(pts) - len(valid)
    if valid.empty:
        if pts["note"].fillna("").str.contains("unsupported").all():
            return (f"`{variant}` against `{reference}`: not measured on this hardware (no "
                    "kernel for one of them); no speed verdict.")
        return (f"`{variant}` against `{reference}`: all {len(pts)} shared points are invalid "
                "(see 'Invalid points'); no speed verdict.")
    modes = valid["mode"].value_counts()
    where = ", ".join(f"{n} {m}" for m, n in modes.items())
    single = int((valid["trials"] <= 1).sum())
    other = int(valid["other_host"].sum())
    notes = []
    if single:
        notes.append(f"{single} single-trial")
    if other:
        notes.append(f"{other} measured on another host")
    if n_bad:
        notes.append(f"{n_bad} invalid point(s) left out")
    tail = f" [{'; '.join(notes)}]" if notes else ""
    body = "; ".join(metric_phrase(g, m) for m in ("ttft_ms", "tpot_ms", "e2el_ms"))
    return (f"**`{variant}` against `{reference}`**, over {len(valid)} valid point(s) "
            f"({where}){tail}: {body}. Percentages are the variant's reduction of the p50 "
            "(E2E: per request; offline: the whole batch); *level* = its 95% interval "
            "contains 0.")


@dataclass(frozen=True)
class Decision:
    """Which of two variants is faster on E2E latency over a regime's valid points.

    ``kind``: ``wins`` (``winner`` is faster where the interval excludes a tie: at every
    point, or only at some with the others ``level``), ``depends`` (each is faster
    somewhere), ``level`` (a tie within the intervals everywhere) or ``none`` (no valid
    point). ``str()`` is the words the regime table shows.
    """

    kind: Literal["wins", "depends", "level", "none"]
    winner: str | None = None
    loser: str | None = None
    #: ``wins`` only at some points, level at the others
    partial: bool = False

    def __str__(self) -> str:
        if self.kind == "none":
            return "no valid point"
        if self.kind == "level":
            return "either (level)"
        if self.kind == "depends":
            return "depends on load"
        return f"{self.winner}" + (" (level at some points)" if self.partial else "")


def _decision(e2e: pd.DataFrame, variant: str, reference: str) -> Decision:
    up = e2e["direction"].str.startswith("faster")
    down = e2e["direction"].str.startswith("slower")
    if e2e.empty:
        return Decision("none")
    if up.any() and down.any():
        return Decision("depends")
    if not up.any() and not down.any():
        return Decision("level")
    if up.any():
        return Decision("wins", variant, reference, partial=not up.all())
    return Decision("wins", reference, variant, partial=not down.all())


def regime_table(g: pd.DataFrame, variant: str, reference: str) -> pd.DataFrame:
    """Per regime (:data:`evalkit.metrics.points.REGIMES`): valid points of all, the gain range of
    each metric (the variant's reduction, %), how E2E went, and the decision (which of the
    two is faster on E2E latency there)."""
    rows = []
    for reg in REGIMES:
        r = g[g["regime"] == reg]
        if r.empty:
            continue
        pts = r.drop_duplicates(["mode", "workload", "concurrency"])
        v = r[r["valid"]]
        e2e = v[(v["metric"] == "e2el_ms") & v["gain_pct"].notna()]

        def rng(metric: str, v: pd.DataFrame = v) -> str:
            x = v.loc[(v["metric"] == metric), "gain_pct"].dropna()
            if not len(x):
                return "n/a"
            return span_words(x, "more", "less") if metric == "output_throughput_tok_s" \
                else span_words(x)

        rows.append({
            "regime": reg, "points": f"{int(pts['valid'].sum())} of {len(pts)} valid",
            "ttft_gain": rng("ttft_ms"), "tpot_gain": rng("tpot_ms"), "e2el_gain": rng("e2el_ms"),
            "throughput_gain": rng("output_throughput_tok_s"),
            "e2el_faster": int(e2e["direction"].str.startswith("faster").sum()),
            "e2el_slower": int(e2e["direction"].str.startswith("slower").sum()),
            "e2el_level": int((e2e["direction"] == "level").sum()),
            "decision": str(_decision(e2e, variant, reference)),
        })
    return pd.DataFrame(rows, columns=REGIME_COLUMNS)


def _loads(g: pd.DataFrame, direction: str) -> str:
    d = g[g["direction"].str.startswith(direction)]
    return ", ".join(f"{'b' if m == 'offline' else 'c'}{c}" for m, c in
                     sorted(set(zip(d["mode"], d["concurrency"], strict=True)),
                            key=lambda t: (t[0], t[1])))


def recommendation(g: pd.DataFrame, reg: str, variant: str, reference: str,
                   quality: dict[str, str] | None = None) -> str:
    """One regime's recommendation in words, with its conditions (points, loads, quality)."""
    v = g[(g["regime"] == reg) & g["valid"]]
    e2e = v[(v["metric"] == "e2el_ms") & v["gain_pct"].notna()]
    if e2e.empty:
        return f"{reg}: no valid point of both variants."
    decision = _decision(e2e, variant, reference)
    ttft = metric_phrase(v, "ttft_ms").replace("TTFT ", "")
    tpot = metric_phrase(v, "tpot_ms").replace("TPOT ", "")
    facts = f"for `{variant}` against `{reference}`, TTFT {ttft}; TPOT {tpot}"
    if decision.kind == "depends":
        head = (f"depends on load: `{variant}` has the lower E2E latency at "
                f"{_loads(e2e, 'faster')}, `{reference}` at {_loads(e2e, 'slower')}")
    elif decision.kind == "level":
        head = "either: E2E latency level within its interval at every point"
    elif decision.kind == "none":
        head = "no valid point"
    else:
        x = e2e["gain_pct"].abs()
        head = (f"**`{decision.winner}`**: E2E latency {_span(x)} lower than "
                f"`{decision.loser}`'s"
                f"{' where the interval excludes 0' if decision.partial else ''}")
    q = ""
    if quality:
        q = " Quality: " + "; ".join(f"`{k}` {t}" for k, t in quality.items()) + "."
    return f"**{reg}** — {head} ({facts}).{q}"


def quality_text(delta: float, lo: float, hi: float, tasks: int, docs: int, model: str) -> str:
    """``-1.2 points [-3.0, 0.6] vs base (mean of 2 tasks, 400 documents, gemma3-270m)``."""
    if math.isnan(delta):
        return "not measured"
    sig = " (significantly worse)" if hi < 0 else " (significantly better)" if lo > 0 else ""
    return (f"{delta:+.1f} points [{lo:+.1f}, {hi:+.1f}] vs base{sig} (mean of {tasks} tasks, "
            f"{docs} documents, {model})")
