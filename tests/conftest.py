"""Shared hooks: the fault-injection table (tests/test_faults.py) printed at the end of a run."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from smoke_study import evalkit, smoke_config

FAULT_ROWS = pytest.StashKey[list[dict]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FAULT_ROWS] = []


@pytest.fixture
def fault_table(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``fault_table(fault, happened, kept, seconds=None)`` adds a row to the end-of-run table
    (``seconds`` defaults to the test's time so far)."""
    rows = request.config.stash[FAULT_ROWS]
    t0 = time.monotonic()

    def add(fault: str, happened: str, kept: str, seconds: float | None = None) -> None:
        rows.append({"fault": fault, "happened": happened, "kept": kept,
                     "seconds": time.monotonic() - t0 if seconds is None else seconds})

    return add


def _format_table(rows: list[dict]) -> list[str]:
    head = ("fault", "what happened", "records kept", "time")
    body = [(r["fault"], r["happened"], r["kept"], f"{r['seconds']:.0f} s") for r in rows]
    widths = [min(70, max(len(x[i]) for x in [head, *body])) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) if len(c) <= w else c for c, w in zip(cells, widths,
                                                                            strict=True))

    return [line(head), "-+-".join("-" * w for w in widths), *map(line, body)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault injection")
    lines = _format_table(rows)
    for ln in lines:
        terminalreporter.write_line(ln)
    total = sum(r["seconds"] for r in rows)
    terminalreporter.write_line(f"{len(rows)} faults, {total:.0f} s")
    try:
        out = config._tmp_path_factory.getbasetemp() / "faults.txt"  # type: ignore[attr-defined]
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"table also written to {out}")
    except (AttributeError, OSError):
        pass


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke study run sequentially once per session (``--run-id smoke-1``): the process,
    the run directory and the study file (tests/test_smoke.py checks it; tests/test_cluster.py
    compares its cluster run with it)."""
    tmp = tmp_path_factory.mktemp("smoke")
    cfg = smoke_config(tmp)
    proc = evalkit("run", str(cfg), "--run-id", "smoke-1", "--no-progress")
    run_dir = tmp / "outputs" / "smoke" / "smoke-1"
    return proc, run_dir, cfg
