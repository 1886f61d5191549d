"""The matrix of the verdict card: per workload regime (and capacity at the SLO of a traffic
mix) × model shape, the scheme to use, weighing every measured scheme and quality
(:func:`run_cells`, :func:`pick_cells`), and the sentence in plain words."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from evalkit.analysis.decision.claim import ClaimReading
from evalkit.analysis.decision.words import (
    interval_words,
    pct_words,
    point_exclusion,
    run_exclusion,
    scheme_label,
    variant_exclusion,
)
from evalkit.analysis.quality import QualitySignal, quality_signal
from evalkit.analysis.report import Report
from evalkit.metrics.points import DECIDING_METRIC, REGIMES

#: capacity rows of the matrix are named with this prefix and the traffic mix.
CAPACITY_ROW = "capacity at the SLO"


@dataclass
class Cell:
    """One matrix cell: a regime (or capacity at the SLO of a mix) of one run."""

    row: str
    shape: str
    run: str
    link: str = ""
    #: recommended variant (None: no deciding point, or no clear winner)
    variant: str | None = None
    scheme: str | None = None
    gain: str = ""
    quality: str = ""
    #: good (quality within tolerance), unsure (its interval reaches below the tolerance),
    #: speed (speed only), loss (quality lost beyond tolerance and nothing else to
    #: recommend), open (no clear winner), none (no deciding point)
    tone: str = "none"
    notes: list[str] = field(default_factory=list)
    points: int = 0
    #: schemes the cell weighed: the reference and every scheme with a deciding point
    schemes: int = 0

    #: for an open cell: ``level`` (a tie within the intervals) or ``depends on load``
    open_kind: str = ""
    #: the device the run measured on
    hardware: str = ""

    @property
    def source(self) -> str:
        """``hopper-llama8b-traffic/r1 · H100``: the run and its device, short."""
        hw = self.hardware.replace("NVIDIA ", "").split(" ")[0] if self.hardware else ""
        return f"{self.run} · {hw}" if hw else self.run

    @property
    def headline(self) -> str:
        if self.variant is None:
            return (self.open_kind or "no clear winner") if self.tone == "open" \
                else "no deciding point"
        return scheme_label(self.scheme)


def quality_words(rep: Report, variant: str) -> tuple[str, QualitySignal | None]:
    """A variant's quality in the card's words, with the signal behind it."""
    q = quality_signal(rep.records, variant, base=rep.base)
    if q is not None:
        return q.text() + " vs base", q
    if not rep.real_weights:
        return "speed only (random weights)", None
    return "quality not measured", None


def quality_tone(q: QualitySignal | None, tolerance_pts: float) -> str:
    """``good``: the whole interval within the tolerance; ``unsure``: it reaches below
    ``-tolerance_pts``; ``loss``: wholly below; ``speed``: no quality measured."""
    if q is None:
        return "speed"
    if q.below(tolerance_pts):
        return "loss"
    return "good" if q.lo_pts >= -tolerance_pts else "unsure"


def _pick(rep: Report, ranked: list[tuple[str, str]], cell: Cell) -> Cell:
    """The first of ``ranked`` ((variant, gain words)) whose quality is within tolerance;
    the fastest is named with its loss where it is passed over."""
    tol = rep.quality_tolerance_pts
    schemes = dict(zip(rep.records["variant"], rep.records["scheme"], strict=False))
    skipped = []
    for variant, gain in ranked:
        words, q = quality_words(rep, variant)
        if q is not None and q.below(tol):
            skipped.append(f"{scheme_label(schemes.get(variant))} ({variant}) is faster "
                           f"({gain}) but loses {q.text()}, beyond the {tol:g}-point tolerance")
            continue
        cell.variant, cell.scheme, cell.gain, cell.quality = (variant, schemes.get(variant),
                                                              gain, words)
        cell.tone = quality_tone(q, tol)
        cell.notes += skipped
        return cell
    variant, gain = ranked[0]
    words, _ = quality_words(rep, variant)
    cell.variant, cell.scheme, cell.gain, cell.quality = variant, schemes.get(variant), gain, words
    cell.tone = "loss"
    cell.notes += [f"every faster scheme loses quality beyond the {tol:g}-point tolerance"]
    return cell


def _regime_cell(rep: Report, label: str, link: str, shape: str, reg: str, ref: str,
                 others: list[str], excl: str, evidence: list[dict]) -> Cell | None:
    metric = DECIDING_METRIC[reg]
    cell = Cell(reg, shape, label, link)
    cands = []
    seen = False
    for other in others:
        gain_rows = rep.gains(other, ref)
        gain_rows = gain_rows[(gain_rows["regime"] == reg) & (gain_rows["metric"] == metric)
                              & gain_rows["gain_pct"].notna()]
        if gain_rows.empty:
            continue
        seen = True
        pair = excl or variant_exclusion(rep, other, ref)
        why = [pair or point_exclusion(valid, trials, note) for valid, trials, note in
               zip(gain_rows["valid"], gain_rows["trials"], gain_rows["note"], strict=True)]
        for (_, gain_row), reason in zip(gain_rows.iterrows(), why, strict=True):
            if reason:
                evidence.append({"run": label, "row": reg, "comparison": f"{other} vs {ref}",
                                 "point": _point(gain_row), "gain": pct_words(gain_row["gain_pct"]),
                                 "why": reason})
        usable = gain_rows[[reason == "" for reason in why]]
        if usable.empty:
            continue
        faster = int(usable["direction"].str.startswith("faster").sum())
        slower = int(usable["direction"].str.startswith("slower").sum())
        med = _median_point(usable)
        cands.append((other, faster, slower, float(med["gain_pct"]), med, len(usable)))
    if not seen:
        return None
    if not cands:
        cell.tone = "none"
        cell.gain = "; ".join(sorted({item["why"] for item in evidence
                                      if item["run"] == label and item["row"] == reg}))
        return cell
    cell.points = max(candidate[5] for candidate in cands)
    cell.schemes = 1 + len(cands)
    what = "throughput" if metric == "output_throughput_tok_s" else "E2E"

    def words(candidate) -> str:
        cand_variant, _, _, median_gain, med, count = candidate
        which = "" if count == 1 else "median " if count % 2 else "lower median "
        rng = f"{which}{pct_words(median_gain)}"
        return (f"{what} {rng} than {ref} {interval_words(med['ci_low_pct'], med['ci_high_pct'])}"
                f" · n = {count} point{'s' if count > 1 else ''}")

    wins = sorted([candidate for candidate in cands if candidate[1] > 0 and candidate[2] == 0],
                  key=lambda candidate: -candidate[3])
    if wins:
        ranked = [(candidate[0], words(candidate)) for candidate in wins]
        # the reference is the fallback when every faster scheme loses quality
        ranked.append((ref, f"the reference of {what}"))
        return _pick(rep, ranked, cell)
    if all(candidate[2] > 0 and candidate[1] == 0 for candidate in cands):
        best = max(cands, key=lambda candidate: candidate[3])
        return _pick(rep, [(ref, f"{best[0]} is {pct_words(best[3])} on {what} · n = "
                                 f"{best[5]} point{'s' if best[5] > 1 else ''}")], cell)
    cell.tone = "open"
    level = all(candidate[1] == 0 and candidate[2] == 0 for candidate in cands)
    cell.open_kind = "level (either)" if level else "depends on load"
    cell.gain = _open_words(what, ref, cands)
    return cell


#: schemes an open cell names, fastest first (the rest are counted; the run's report lists
#: them all)
OPEN_SHOWN = 2


def _open_words(what: str, ref: str, cands: list[tuple]) -> str:
    """An open cell's evidence, short enough for the card: per scheme its median point's
    gain and at how many of its points it was faster, fastest first."""
    ranked = sorted(cands, key=lambda candidate: -candidate[3])
    shown = "; ".join(f"{v} {pct_words(gain)} ({faster}/{count})"
                      for v, faster, _, gain, _, count in ranked[:OPEN_SHOWN])
    more = len(ranked) - OPEN_SHOWN
    return shown + (f"; {more} more in the run's report" if more > 0 else "") + \
        f" · {what} vs {ref}, median point (faster at / points)"


def _median_point(gain_rows: pd.DataFrame) -> pd.Series:
    """The point whose gain is the median of ``gain_rows`` (the lower of the two middle ones
    for an even count): a measured point, so the gain the card states and the interval beside
    it belong to the same point. The mean of the two middle points would be a figure no point
    measured, and its interval would be neither's."""
    ranked = gain_rows.sort_values("gain_pct", kind="stable")
    return ranked.iloc[(len(ranked) - 1) // 2]


def _point(r) -> str:
    what = "c" if r["mode"] == "server" else "batch "
    return f"{r['mode']} {r['workload']} {what}{int(r['concurrency'])}"


def run_cells(rep: Report, label: str, shape: str, *, link: str = "",
              superseded_by: str | None = None) -> tuple[list[Cell], list[dict]]:
    """A run's matrix cells (one per regime it measured, then one per traffic mix with a
    capacity at the SLO) and its other evidence (points that do not decide, with why)."""
    excl = run_exclusion(rep, superseded_by)
    evidence: list[dict] = []
    cells: list[Cell] = []
    have = list(pd.unique(rep.points()["variant"])) if len(rep.points()) else []
    ref = rep.reference if rep.reference in have else rep.base if rep.base in have else None
    if ref is not None:
        others = [v for v in have if v != ref]
        for reg in REGIMES:
            c = _regime_cell(rep, label, link, shape, reg, ref, others, excl, evidence)
            if c is not None:
                cells.append(c)
    cells += _capacity_cells(rep, label, link, shape, excl, evidence)
    for c in cells:
        c.hardware = rep.hardware
    return cells, evidence


def _capacity_cells(rep: Report, label: str, link: str, shape: str, excl: str,
                    evidence: list[dict]) -> list[Cell]:
    cap = rep.capacity()
    out = []
    if cap.empty:
        return out
    for wl, g in cap.groupby("workload", sort=False):
        cell = Cell(f"{CAPACITY_ROW} · {wl}", shape, label, link)
        ref = g["reference"].dropna()
        ref = str(ref.iloc[0]) if len(ref) else None
        o = g[(g["variant"] != ref) & g["gain_pct"].notna()]
        why = [excl or variant_exclusion(rep, str(v), ref) for v in o["variant"]]
        for r, reason in zip(o.itertuples(), why, strict=True):
            if reason:
                evidence.append({"run": label, "row": cell.row, "comparison": f"{r.variant} vs "
                                 f"{ref}", "point": "capacity", "gain": pct_words(r.gain_pct,
                                 "more", "less"), "why": reason})
        if len(o) and all(why):
            cell.tone = "none"
            out.append(cell)
            continue
        o = o[[reason == "" for reason in why]]
        if o.empty or ref is None:
            continue

        def words(r, ref: str = ref) -> str:
            note = str(r.gain_note)
            g, b = r.gain_pct, ""
            if note.startswith("a lower bound") and not math.isnan(r.gain_lo):
                g, b = r.gain_lo, "≥ "
            elif note.startswith("an upper bound") and not math.isnan(r.gain_hi):
                g, b = r.gain_hi, "≤ "
            return (f"{b}{pct_words(g, 'more', 'fewer')} req/s per GPU than {ref} "
                    f"[{r.gain_lo:+.0f}, {r.gain_hi:+.0f} %]")

        wins = o[o["gain_lo"] > 0].sort_values("gain_pct", ascending=False)
        cell.points = len(o)
        cell.schemes = 1 + o["variant"].nunique()
        if len(wins):
            ranked = [(r.variant, words(r)) for r in wins.itertuples()]
            ranked.append((ref, "the reference"))
            picked = _pick(rep, ranked, cell)
            picked.gain += _level_with(picked.variant, wins, g)
            out.append(picked)
        elif (o["gain_hi"] < 0).all():
            out.append(_pick(rep, [(ref, "serves the most req/s per GPU")], cell))
        else:
            cell.tone = "open"
            cell.open_kind = "not resolved"
            # schemes in one bracket read alike: say it once for all of them
            said: dict[str, list[str]] = {}
            for r in o.itertuples():
                said.setdefault(words(r), []).append(str(r.variant))
            cell.gain = "; ".join(f"{', '.join(vs)}: {w}" for w, vs in said.items())
            out.append(cell)
    return out


def _level_with(variant: str | None, wins: pd.DataFrame, cap: pd.DataFrame) -> str:
    """The other winners whose capacity interval (req/s per GPU) overlaps ``variant``'s: the
    card names one scheme, and must not let a tie read as a ranking (`` · level with X
    (capacity [interval])``; empty if none)."""
    mine = cap[cap["variant"] == variant]
    if mine.empty:
        return ""
    lo, hi = float(mine["req_s_per_gpu_lo"].iloc[0]), float(mine["req_s_per_gpu_hi"].iloc[0])
    level = [r for r in wins.itertuples() if r.variant != variant
             and r.req_s_per_gpu_lo <= hi and lo <= r.req_s_per_gpu_hi]
    if not level:
        return ""
    return " · level with " + "; ".join(
        f"{scheme_label(r.scheme)} ({r.req_s_per_gpu:.3g} [{r.req_s_per_gpu_lo:.3g}, "
        f"{r.req_s_per_gpu_hi:.3g}])" for r in level)


def pick_cells(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """One cell per row × shape: among the runs with a deciding point there, the one that
    weighed the most schemes (a run that did not measure a scheme cannot recommend against
    it), then a decided cell before an open one, then the most deciding points. The others
    are kept aside as other evidence."""
    best: dict[tuple[str, str], Cell] = {}
    aside = []
    rank = {"good": 3, "unsure": 3, "speed": 3, "loss": 3, "open": 2, "none": 0}

    def key(c: Cell) -> tuple[bool, int, int, int]:
        return rank[c.tone] > 0, c.schemes, rank[c.tone], c.points

    for c in cells:
        k = (c.row, c.shape)
        cur = best.get(k)
        if cur is None or key(c) > key(cur):
            if cur is not None:
                aside.append(cur)
            best[k] = c
        else:
            aside.append(c)
    return list(best.values()), aside


def row_order(rows: list[str]) -> list[str]:
    """Capacity rows first (what a production owner compares), then the regimes in order."""
    caps = sorted(r for r in set(rows) if r.startswith(CAPACITY_ROW))
    regs = [r for r in REGIMES if r in set(rows)]
    return caps + regs


def plain_words(readings: list[ClaimReading], cells: list[Cell]) -> str:
    """One sentence of what the claim's variant does against its reference, e.g.
    ``W4A8-FP8 is 23–43 % faster to first token than W4A16; one request at a time it decodes
    17 % slower.``"""
    by = {r.metric: r for r in readings if r.points}
    if not by:
        return ""
    r0 = next(iter(by.values()))
    v, ref = r0.variant, r0.reference
    parts = []
    t = by.get("ttft_ms")
    if t is not None:
        parts.append(f"`{v}` is {_range_speed(t.low, t.high)} to first token than `{ref}`")
    p = by.get("tpot_ms")
    if p is not None:
        parts.append(f"it decodes {_range_speed(p.low, p.high)} per output token")
    return "; ".join(parts) + f" (over the {r0.points} deciding points)."


def _range_speed(lo: float, hi: float) -> str:
    if lo >= 0:
        return f"{lo:.0f}–{hi:.0f} % faster"
    if hi < 0:
        return f"{-hi:.0f}–{-lo:.0f} % slower"
    return f"between {-lo:.0f} % slower and {hi:.0f} % faster"


def carried_notes(reports: list[Report]) -> list[str]:
    """Caveats that travel with every number: kernel substitutions (a scheme that ran
    another's kernel) and baselines that are already quantized."""
    out = []
    for r in reports:
        for v, why in r.substituted.items():
            # the card's short form: the report's caveat says how its quality was measured
            note = f"{v}: {why.split('; ')[0]}."
            if note not in out:
                out.append(note)
        for c in r.caveats:
            if "already-quantized" in c and f"{r.study}: {c}" not in out:
                out.append(f"{r.study}: {c}")
    return out
