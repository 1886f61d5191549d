"""The verdict card: what a reader decides from, computed once for a report and the summary.

Three parts, each a pure function of :class:`evalkit.analysis.report.Report` objects:

* **the claim** (:func:`claim_readings`): a published "X % faster" read both ways — latency
  reduced by X % (``latency × (1 − X/100)``) and speed × (1 + X/100) (latency reduced by
  ``1 − 1/(1 + X/100)``) — against the measured reductions and their 95 % intervals;
* **the matrix** (:func:`run_cells`, :func:`pick_cells`): per workload regime (and capacity
  at the SLO per traffic mix) × model shape, the recommended scheme with its gain, interval
  and quality, weighing every measured scheme and the study's quality tolerance;
* **other evidence** (``Card.evidence`` of :func:`build_card`): what was measured but never
  decides a cell, with why.

Only *deciding* points decide: valid, pooled over at least two trials, from a compiled
engine (no eager GPU engine), of a variant whose latency points all finished (a stage cut
off keeps its finished variants' points; :func:`comparison_exclusion`), of a run no other run
supersedes (:mod:`evalkit.analysis.lineage`). The rest is "other evidence", with its reason.

The package: :mod:`.words` (tones, wording, which points decide), :mod:`.claim` (the claim
read both ways), :mod:`.cells` (the matrix), :mod:`.card` (the card over runs).
"""

from __future__ import annotations

from evalkit.analysis.decision.card import Card, RunEntry, build_card
from evalkit.analysis.decision.cells import Cell, run_cells
from evalkit.analysis.decision.claim import ClaimReading, claim_readings
from evalkit.analysis.decision.words import (
    comparison_exclusion,
    interval_words,
    pct_words,
    run_exclusion,
)

__all__ = [
    "Card", "Cell", "ClaimReading", "RunEntry", "build_card", "claim_readings",
    "comparison_exclusion", "interval_words", "pct_words", "run_cells", "run_exclusion",
]
