"""A published "X % faster" read both ways against the deciding points: latency reduced by
X % and speed × (1 + X/100) (:func:`claim_readings`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from evalkit.analysis.claims import claim_verdict, speed_reading_reduction
from evalkit.analysis.decision.words import point_exclusion
from evalkit.analysis.report import Report

HOPPER = ("H100", "H200", "H800", "GH200")


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
        return speed_reading_reduction(self.claimed_pct)

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
