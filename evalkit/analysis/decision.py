"""The verdict card: what a reader decides from, computed once for a report and the summary.

Three parts, each a pure function of :class:`evalkit.analysis.report.Report` objects:

* **the claim** (:func:`claim_readings`): a published "X % faster" read both ways — latency
  reduced by X % (``latency × (1 − X/100)``) and speed × (1 + X/100) (latency reduced by
  ``1 − 1/(1 + X/100)``) — against the measured reductions and their 95 % intervals;
* **the matrix** (:func:`run_cells`, :func:`pick_cells`): per workload regime (and capacity
  at the SLO per traffic mix) × model shape, the recommended scheme with its gain, interval
  and quality, weighing every measured scheme and the study's quality tolerance;
* **other evidence** (:func:`other_evidence`): what was measured but never decides a cell.

Only *deciding* points decide: valid, pooled over at least two trials, from a compiled
engine (no eager GPU engine), from a latency stage that finished, of a run no other run
supersedes (:mod:`evalkit.analysis.lineage`). The rest is "other evidence", with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from evalkit.analysis.claims import claim_verdict
from evalkit.analysis.quality import QualitySignal, quality_signal
from evalkit.analysis.report import Report
from evalkit.core.schemes import SCHEMES
from evalkit.metrics.points import DECIDING_METRIC, REGIMES

#: each cell tone's background colour and meaning (the HTML card and the exported figure)
TONES = {"good": ("#e3f4e8", "quality measured, within tolerance"),
         "unsure": ("#fbe9d7", "quality interval reaches past the tolerance"),
         "speed": ("#fff4d6", "speed only: quality not measured on real weights"),
         "loss": ("#fde2e1", "quality lost beyond the tolerance"),
         "open": ("#eef1f5", "no clear winner"),
         "none": ("#f6f6f6", "no deciding point")}
#: capacity rows of the matrix are named with this prefix and the traffic mix.
CAPACITY_ROW = "capacity at the SLO"
HOPPER = ("H100", "H200", "H800", "GH200")


def scheme_label(scheme: str | None) -> str:
    """``w4a8_fp8`` → ``W4A8-FP8`` (the scheme's display name), ``base`` → ``bf16 (base)``."""
    if scheme is None:
        return "?"
    s = SCHEMES.get(scheme)
    label = getattr(s, "label", None) if s is not None else None
    if label:
        return str(label)
    return "bf16 (base)" if scheme == "base" else scheme.upper().replace("_", "-")


def pct_words(gain: float, faster: str = "faster", slower: str = "slower") -> str:
    """A reduction in words: ``23 % faster`` or ``17 % slower`` (never a negative reduction)."""
    if math.isnan(gain):
        return "n/a"
    return f"{abs(gain):.0f} % {faster if gain >= 0 else slower}"


def interval_words(lo: float, hi: float) -> str:
    """``[18, 28] %`` of a reduction's interval; ``[17–19 % slower]`` when wholly negative."""
    if math.isnan(lo) or math.isnan(hi):
        return ""
    if hi < 0:
        return f"[{-hi:.0f}–{-lo:.0f} % slower]"
    return f"[{lo:.0f}, {hi:.0f} %]"


# ---- which points decide --------------------------------------------------------------

def run_exclusion(rep: Report, superseded_by: str | None = None) -> str:
    """Why none of a run's points decides (empty when they may): superseded, an eager GPU
    engine, an interrupted or failed latency stage."""
    if superseded_by:
        return f"superseded by {superseded_by}"
    if rep.eager_gpu:
        return "eager GPU engine (no CUDA graphs): a sanity check, not a serving figure"
    st = rep.stage_states.get("latency")
    if st in ("interrupted", "failed"):
        return f"latency stage {st}"
    return ""


def point_exclusion(valid: bool, trials: int, note: str = "") -> str:
    """Why one point does not decide (empty when it does)."""
    if not valid:
        return ("not measured on this hardware (no kernel)" if "unsupported" in str(note)
                else "invalid point")
    if trials <= 1:
        return "single trial"
    return ""


# ---- the claim ------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimReading:
    """One claimed figure (TTFT or TPOT) against the deciding points."""

    claim: str
    variant: str
    reference: str
    metric: str
    claimed_pct: float
    points: int
    low: float = math.nan
    high: float = math.nan
    best_ci_high: float = math.nan
    reached_latency: int = 0
    reached_speed: int = 0
    #: relative tolerance of the claim (a point *holds* when its whole interval is at or
    #: above the claimed reduction minus this %, :func:`evalkit.analysis.claims.claim_verdict`)
    tolerance_pct: float = 10.0
    why_none: str = ""

    @property
    def speed_equivalent_pct(self) -> float:
        """The latency reduction that is a speed-up of ×(1 + claimed/100)."""
        return (1 - 1 / (1 + self.claimed_pct / 100)) * 100

    @property
    def name(self) -> str:
        return "TTFT" if self.metric == "ttft_ms" else "TPOT"

    def verdict_latency(self) -> str:
        c = self.claimed_pct
        if not self.points:
            return f"latency −{c:.0f} %: not checked — {self.why_none}"
        if self.reached_latency:
            return (f"latency −{c:.0f} %: holds at {self.reached_latency} of {self.points} "
                    f"points (measured {self.range_words()})")
        return (f"latency −{c:.0f} %: holds nowhere (measured {self.range_words()}; no "
                f"interval lies above it, the highest reaches {self.best_ci_high:.0f} %)")

    def verdict_speed(self) -> str:
        c, eq = self.claimed_pct, self.speed_equivalent_pct
        if not self.points:
            return f"speed ×{1 + c / 100:.2f}: not checked"
        best = 1 / (1 - self.high / 100) if self.high < 100 else math.inf
        if self.reached_speed:
            return (f"speed ×{1 + c / 100:.2f} (= latency −{eq:.0f} %): holds at "
                    f"{self.reached_speed} of {self.points} points (best ×{best:.2f})")
        return (f"speed ×{1 + c / 100:.2f} (= latency −{eq:.0f} %): holds nowhere (no "
                f"interval lies above it; best point estimate ×{best:.2f})")

    def holds(self) -> str:
        """``both readings`` / ``speed reading only`` / ``neither`` / ``not checked``."""
        if not self.points:
            return "not checked"
        if self.reached_latency:
            return "holds in part (both readings)"
        return ("holds in part (speed reading only)" if self.reached_speed
                else "does not hold (either reading)")

    def range_words(self) -> str:
        lo, hi = self.low, self.high
        if lo >= 0:
            return f"{lo:.0f}–{hi:.0f} % lower"
        if hi < 0:
            return f"{-hi:.0f}–{-lo:.0f} % higher"
        return f"from {-lo:.0f} % higher to {hi:.0f} % lower"


def _claim_applies(claim, hardware: str) -> bool:
    is_hopper = any(k in hardware for k in HOPPER)
    return claim.hardware == "any" or (claim.hardware == "hopper") == is_hopper


def claims_of(reports: list[Report]) -> list:
    """Every distinct claim the runs state (by variant, reference and figures)."""
    seen, out = set(), []
    for r in reports:
        for c in r.claims:
            k = (c.variant, c.reference, c.ttft_reduction_pct, c.tpot_reduction_pct)
            if k not in seen:
                seen.add(k)
                out.append(c)
    return out


def claim_readings(evidence: list[tuple[Report, str]], claim) -> list[ClaimReading]:
    """The claim's TTFT and TPOT figures against the deciding points of every run in
    ``evidence`` ((report, run exclusion) pairs) on the claim's hardware."""
    out = []
    for metric, claimed in (("ttft_ms", claim.ttft_reduction_pct),
                            ("tpot_ms", claim.tpot_reduction_pct)):
        if claimed is None:
            continue
        frames, why = [], set()
        for rep, excl in evidence:
            if not _claim_applies(claim, rep.hardware):
                why.add(f"no run on {claim.hardware} hardware")
                continue
            have = set(rep.points()["variant"])
            if not {claim.variant, claim.reference} <= have:
                why.add(f"{claim.variant} or {claim.reference} not measured")
                continue
            if excl:
                why.add(excl)
                continue
            g = rep.gains(claim.variant, claim.reference)
            g = g[g["metric"] == metric]
            if g["note"].fillna("").str.contains("unsupported").all() and len(g):
                why.add("not measured on this hardware (no kernel for one of the two)")
            g = g[g["gain_pct"].notna()]
            ok = g[[point_exclusion(v, t) == "" for v, t in
                    zip(g["valid"], g["trials"], strict=True)]]
            if len(g) and ok.empty:
                why.add("no valid point of several trials")
            frames.append(ok)
        g = pd.concat(frames) if frames else pd.DataFrame()
        if g.empty:
            out.append(ClaimReading(claim.name, claim.variant, claim.reference, metric,
                                    float(claimed), 0, why_none="; ".join(sorted(why))
                                    or "not measured"))
            continue
        eq = (1 - 1 / (1 + claimed / 100)) * 100
        tol = claim.tolerance_pct

        def held(target: float, g: pd.DataFrame = g, tol: float = tol) -> int:
            return sum(claim_verdict(lo, hi, target, tol) == "holds"
                       for lo, hi in zip(g["ci_low_pct"], g["ci_high_pct"], strict=True))

        out.append(ClaimReading(
            claim.name, claim.variant, claim.reference, metric, float(claimed), len(g),
            float(g["gain_pct"].min()), float(g["gain_pct"].max()),
            float(g["ci_high_pct"].max()), held(float(claimed)), held(eq), tol))
    return out


# ---- the matrix -----------------------------------------------------------------------

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


def _substitution(rep: Report, variant: str) -> list[str]:
    return [c for c in rep.caveats if c.startswith(f"{variant}:")]


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
        cell.notes += skipped + _substitution(rep, variant)
        return cell
    variant, gain = ranked[0]
    words, _ = quality_words(rep, variant)
    cell.variant, cell.scheme, cell.gain, cell.quality = variant, schemes.get(variant), gain, words
    cell.tone = "loss"
    cell.notes += [f"every faster scheme loses quality beyond the {tol:g}-point tolerance"]
    cell.notes += _substitution(rep, variant)
    return cell


def _regime_cell(rep: Report, label: str, link: str, shape: str, reg: str, ref: str,
                 others: list[str], excl: str, evidence: list[dict]) -> Cell | None:
    metric = DECIDING_METRIC[reg]
    cell = Cell(reg, shape, label, link)
    cands = []
    seen = False
    for v in others:
        g = rep.gains(v, ref)
        g = g[(g["regime"] == reg) & (g["metric"] == metric) & g["gain_pct"].notna()]
        if g.empty:
            continue
        seen = True
        why = [excl or point_exclusion(a, t, n) for a, t, n in
               zip(g["valid"], g["trials"], g["note"], strict=True)]
        for (_, r), w in zip(g.iterrows(), why, strict=True):
            if w:
                evidence.append({"run": label, "row": reg, "comparison": f"{v} vs {ref}",
                                 "point": _point(r), "gain": pct_words(r["gain_pct"]),
                                 "why": w})
        d = g[[w == "" for w in why]]
        if d.empty:
            continue
        faster = int(d["direction"].str.startswith("faster").sum())
        slower = int(d["direction"].str.startswith("slower").sum())
        med = d.iloc[(d["gain_pct"] - d["gain_pct"].median()).abs().argsort().iloc[0]]
        cands.append((v, faster, slower, float(d["gain_pct"].median()), med, len(d)))
    if not seen:
        return None
    if not cands:
        cell.tone = "none"
        cell.gain = "; ".join(sorted({e["why"] for e in evidence
                                      if e["run"] == label and e["row"] == reg}))
        return cell
    cell.points = max(c[5] for c in cands)
    what = "throughput" if metric == "output_throughput_tok_s" else "E2E"

    def words(c) -> str:
        v, _, _, m, med, n = c
        rng = (f"{pct_words(m)}" if n == 1 else f"median {pct_words(m)}")
        return (f"{what} {rng} than {ref} {interval_words(med['ci_low_pct'], med['ci_high_pct'])}"
                f" · n = {n} point{'s' if n > 1 else ''}")

    wins = sorted([c for c in cands if c[1] > 0 and c[2] == 0], key=lambda c: -c[3])
    if wins:
        ranked = [(c[0], words(c)) for c in wins]
        # the reference is the fallback when every faster scheme loses quality
        ranked.append((ref, f"the reference of {what}"))
        return _pick(rep, ranked, cell)
    if all(c[2] > 0 and c[1] == 0 for c in cands):
        best = max(cands, key=lambda c: c[3])
        return _pick(rep, [(ref, f"{best[0]} is {pct_words(best[3])} on {what} · n = "
                                 f"{best[5]} point{'s' if best[5] > 1 else ''}")], cell)
    cell.tone = "open"
    level = all(c[1] == 0 and c[2] == 0 for c in cands)
    cell.open_kind = "level (either)" if level else "depends on load"
    cell.gain = "; ".join(f"{c[0]}: {words(c)}" for c in cands)
    return cell


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
        if excl:
            for r in o.itertuples():
                evidence.append({"run": label, "row": cell.row, "comparison": f"{r.variant} vs "
                                 f"{ref}", "point": "capacity", "gain": pct_words(r.gain_pct,
                                 "more", "less"), "why": excl})
            cell.tone = "none"
            out.append(cell)
            continue
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
        if len(wins):
            ranked = [(r.variant, words(r)) for r in wins.itertuples()]
            ranked.append((ref, "the reference"))
            out.append(_pick(rep, ranked, cell))
        elif (o["gain_hi"] < 0).all():
            out.append(_pick(rep, [(ref, "serves the most req/s per GPU")], cell))
        else:
            cell.tone = "open"
            cell.open_kind = "not resolved"
            cell.gain = "not resolved: " + "; ".join(words(r) for r in o.itertuples())
            out.append(cell)
    return out


def pick_cells(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """One cell per row × shape: the one on the most deciding points (a run of fewer is kept
    aside as other evidence)."""
    best: dict[tuple[str, str], Cell] = {}
    aside = []
    rank = {"good": 3, "unsure": 3, "speed": 3, "loss": 3, "open": 2, "none": 0}
    for c in cells:
        k = (c.row, c.shape)
        cur = best.get(k)
        if cur is None or (rank[c.tone], c.points) > (rank[cur.tone], cur.points):
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
        for c in r.caveats:
            if ("vLLM ran" in c or "already-quantized" in c) and c not in out:
                out.append(f"{r.study}: {c}" if "already-quantized" in c else c)
    return out


# ---- the card -------------------------------------------------------------------------

@dataclass
class RunEntry:
    """A run as the card reads it."""

    report: Report
    label: str
    shape: str
    link: str = ""
    superseded_by: str | None = None


@dataclass
class Card:
    """Everything the verdict card shows (HTML and the exported PNG/SVG draw the same)."""

    title: str
    claim_text: str
    claim_source: str
    readings: list[ClaimReading]
    sentence: str
    cells: list[Cell]
    rows: list[str]
    shapes: list[str]
    notes: list[str]
    evidence: pd.DataFrame
    tolerance_pts: float
    quality: list[tuple[str, str, str]] = field(default_factory=list)

    def cell(self, row: str, shape: str) -> Cell | None:
        return next((c for c in self.cells if c.row == row and c.shape == shape), None)


EVIDENCE_COLUMNS = ["run", "row", "comparison", "point", "gain", "why"]


def build_card(entries: list[RunEntry], title: str) -> Card:
    """The verdict card over runs: the claim in both readings over the deciding points of
    every run that may decide, the matrix (one cell per regime or mix × model shape) and
    everything that does not decide, with its reason."""
    cells, evidence = [], []
    for e in entries:
        c, ev = run_cells(e.report, e.label, e.shape, link=e.link,
                          superseded_by=e.superseded_by)
        cells += c
        evidence += ev
    chosen, aside = pick_cells(cells)
    for c in aside:
        if c.variant is not None or c.tone == "open":
            evidence.append({"run": c.run, "row": c.row, "comparison": "", "point": "",
                             "gain": f"{c.headline}: {c.gain}".strip(": "),
                             "why": "a run with more deciding points answers this cell"})
    reports = [e.report for e in entries]
    live = [(e.report, run_exclusion(e.report, e.superseded_by)) for e in entries]
    claims = claims_of(reports)
    readings = claim_readings(live, claims[0]) if claims else []
    shapes = list(dict.fromkeys(c.shape for c in chosen))
    quality = []
    for e in entries:
        if run_exclusion(e.report, e.superseded_by).startswith("superseded"):
            continue
        schemes = dict(zip(e.report.records["variant"], e.report.records["scheme"],
                           strict=False))
        for v in pd.unique(e.report.records["variant"]):
            if v == e.report.base:
                continue
            q = quality_signal(e.report.records, v, base=e.report.base)
            if q is not None:
                tone = quality_tone(q, e.report.quality_tolerance_pts)
                quality.append((f"{scheme_label(schemes.get(v))} ({e.label})", q.text(), tone))
    tol = max((r.quality_tolerance_pts for r in reports), default=1.0)
    return Card(
        title=title, claim_text=claims[0].text if claims else "",
        claim_source=claims[0].source if claims else "", readings=readings,
        sentence=plain_words(readings, chosen), cells=chosen,
        rows=row_order([c.row for c in chosen]), shapes=shapes,
        notes=carried_notes(reports), tolerance_pts=tol, quality=quality,
        evidence=pd.DataFrame(evidence, columns=EVIDENCE_COLUMNS))
