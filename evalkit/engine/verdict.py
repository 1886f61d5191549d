"""What a run remembers about an engine that cannot serve a variant here."""

from __future__ import annotations

from typing import Any


def record_engine_verdict(run: Any, variant: str, status: str, reason: str, stage: str) -> None:
    """Remember, for this run, that the engine cannot serve ``variant`` here (and why)."""
    run.mark_unit("engine", variant, {"status": status, "reason": reason, "stage": stage})


def engine_verdict(run: Any, variant: str) -> dict[str, str] | None:
    """What the engine said about ``variant`` earlier in this run, if it refused it."""
    return run.unit_done("engine", variant)
