"""The verdict card over runs (:func:`build_card`): the claim in both readings, the matrix,
the quality of each scheme, the caveats carried with the numbers and the other evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from evalkit.analysis.decision.cells import (
    CAPACITY_ROW,
    Cell,
    carried_notes,
    pick_cells,
    plain_words,
    quality_tone,
    row_order,
    run_cells,
)
from evalkit.analysis.decision.claim import ClaimReading, claim_readings, claims_of
from evalkit.analysis.decision.words import comparison_exclusion, run_exclusion, scheme_label
from evalkit.analysis.quality import quality_signal
from evalkit.analysis.report import Report


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


def _moved_capacity(cell: Cell, repeats: pd.DataFrame) -> list[str]:
    """A capacity cell's note per capacity of its run and mix that another sitting of the
    same setup measured beyond the interval of the change: the other figure, and the change
    from this run's with its interval."""
    if not cell.row.startswith(f"{CAPACITY_ROW} · "):
        return []
    mix = cell.row.removeprefix(f"{CAPACITY_ROW} · ")
    rows = repeats[(repeats["metric"] == "capacity_req_s_per_gpu") & repeats["beyond"]
                   & (repeats["workload"] == mix)
                   & ((repeats["run_a"] == cell.run) | (repeats["run_b"] == cell.run))]
    out = []
    for r in rows.itertuples(index=False):
        mine_a = r.run_a == cell.run
        other, mine = (r.value_b, r.value_a) if mine_a else (r.value_a, r.value_b)
        # the change from this run's figure to the other sitting's, with its interval
        sign = 1 if mine_a else -1
        lo, hi = sorted((sign * r.ci_low_pct * r.value_a / mine,
                         sign * r.ci_high_pct * r.value_a / mine))
        out.append(f"{r.variant} re-measured: {other:.3g} req/s "
                   f"({(other / mine - 1) * 100:+.0f} % [{lo:+.0f}, {hi:+.0f} %])")
    return out


def build_card(entries: list[RunEntry], title: str, repeats: pd.DataFrame | None = None
               ) -> Card:
    """The verdict card over runs: the claim in both readings over the deciding points of
    every run that may decide, the matrix (one cell per regime or mix × model shape) and
    everything that does not decide, with its reason.

    ``repeats``: :func:`evalkit.analysis.summary.repeats` over the same runs; a capacity cell
    whose run measured a capacity that another sitting of the same setup found beyond its
    interval carries a note with the other sitting's figure."""
    cells, evidence = [], []
    for e in entries:
        c, ev = run_cells(e.report, e.label, e.shape, link=e.link,
                          superseded_by=e.superseded_by)
        cells += c
        evidence += ev
    chosen, aside = pick_cells(cells)
    if repeats is not None and len(repeats):
        for c in chosen:
            c.notes += _moved_capacity(c, repeats)
    for c in aside:
        if c.variant is not None or c.tone == "open":
            evidence.append({"run": c.run, "row": c.row, "comparison": "", "point": "",
                             "gain": f"{c.headline}: {c.gain}".strip(": "),
                             "why": "a run that weighed more schemes, or on more deciding "
                             "points, answers this cell"})
    reports = [e.report for e in entries]
    claims = claims_of(reports)
    readings = []
    if claims:
        live = [(e.report, comparison_exclusion(e.report, claims[0].variant, claims[0].reference,
                                                e.superseded_by)) for e in entries]
        readings = claim_readings(live, claims[0])
    shapes = list(dict.fromkeys(c.shape for c in chosen))
    quality = []
    for e in entries:
        if run_exclusion(e.report, e.superseded_by).startswith("superseded"):
            continue
        schemes = dict(zip(e.report.records["variant"], e.report.records["scheme"],
                           strict=False))
        for v in pd.unique(e.report.records["variant"]):
            if v == e.report.base or v in e.report.substituted:  # not its scheme's figures
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
