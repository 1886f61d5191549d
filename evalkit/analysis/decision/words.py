"""What the verdict card says and in which words: cell tones, scheme names, "X % faster /
slower" (never a negative reduction), and which points decide (:func:`run_exclusion`,
:func:`comparison_exclusion`, :func:`point_exclusion`)."""

from __future__ import annotations

import math

from evalkit.analysis.report import Report
from evalkit.core.schemes import SCHEMES

#: each cell tone's background colour and meaning (the HTML card and the exported figure)
TONES = {"good": ("#e3f4e8", "quality measured, within tolerance"),
         "unsure": ("#fbe9d7", "quality interval reaches past the tolerance"),
         "speed": ("#fff4d6", "speed only: quality not measured on real weights"),
         "loss": ("#fde2e1", "quality lost beyond the tolerance"),
         "open": ("#eef1f5", "no clear winner"),
         "none": ("#f6f6f6", "no deciding point")}


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
    engine, a latency stage that was interrupted or failed before two variants finished all
    their points (with two or more, :func:`variant_exclusion` keeps out the others)."""
    if superseded_by:
        return f"superseded by {superseded_by}"
    if rep.eager_gpu:
        return "eager GPU engine (no CUDA graphs): a sanity check, not a serving figure"
    st = rep.stage_states.get("latency")
    if st in ("interrupted", "failed") and len(rep.latency_finished or ()) < 2:
        return f"latency stage {st}"
    return ""


def variant_exclusion(rep: Report, *variants: str | None) -> str:
    """Why the points of ``variants`` (a variant and its reference) do not decide although
    their run's may: the latency stage was cut off before one of them finished all its
    points (``rep.latency_finished``), or vLLM ran one of them with another scheme's
    activations (``rep.substituted``); empty when they may."""
    finished = rep.latency_finished
    for v in variants:
        if finished is not None and v is not None and v not in finished:
            return (f"latency stage {rep.stage_states.get('latency')} before {v}'s points "
                    "all finished")
    for v in variants:
        if v is not None and v in rep.substituted:
            return (f"vLLM ran {v} with another scheme's kernel: its figures are not its "
                    "scheme's")
    return ""


def comparison_exclusion(rep: Report, variant: str, reference: str,
                         superseded_by: str | None = None) -> str:
    """Why the points of ``variant`` against ``reference`` do not decide (empty when they
    may): :func:`run_exclusion`, else :func:`variant_exclusion` of either."""
    return run_exclusion(rep, superseded_by) or variant_exclusion(rep, variant, reference)


def point_exclusion(valid: bool, trials: int, note: str = "") -> str:
    """Why one point does not decide (empty when it does)."""
    if not valid:
        return ("not measured on this hardware (no kernel)" if "unsupported" in str(note)
                else "invalid point")
    if trials <= 1:
        return "single trial"
    return ""
