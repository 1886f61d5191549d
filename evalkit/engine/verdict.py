"""What a run remembers about an engine that cannot serve a variant here (kept in the run's
unit store, :class:`evalkit.core.units.UnitStore`, and read by every stage that starts one)."""

from __future__ import annotations

from evalkit.core.run import Run


def record_engine_verdict(run: Run, variant: str, status: str, reason: str, stage: str) -> None:
    """Remember, for this run, that the engine cannot serve ``variant`` here (and why)."""
    run.units.set_engine_verdict(variant, status, reason, stage)


def engine_verdict(run: Run, variant: str) -> dict[str, str] | None:
    """What the engine said about ``variant`` earlier in this run, if it refused it."""
    return run.units.engine_verdict(variant)
