"""Naming of lm-eval metrics in records (shared by the accuracy stage and the run comparison)."""

from __future__ import annotations


def metric_label(name: str, filt: str) -> str:
    """Record name of an lm-eval metric under a filter.

    lm-eval keys results as ``"acc,none"`` or ``"exact_match,flexible-extract"``. Records
    use the bare metric name for the default ``none`` filter (``acc``, ``acc_norm``) and
    ``name[filter]`` otherwise (``exact_match[flexible-extract]``), so two filters of one
    metric never collide and the filter stays visible.
    """
    return name if filt == "none" else f"{name}[{filt}]"
