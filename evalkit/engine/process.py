"""Engine processes: start in their own process group, stop the whole group (no orphans), say
how one ended."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from evalkit.core.errors import EngineError
from evalkit.core.specs import EngineSpec
from evalkit.engine.options import engine_cores

HEALTH_POLL_S = 0.5


_STOP_GRACE_S = 30.0


_KILL_WAIT_S = 10.0


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after it.
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            members.append(int(d.name))
    return members


def stop_process_group(proc: subprocess.Popen[Any], *, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM the process group led by ``proc``, wait, then SIGKILL what is left.

    vLLM's API server forks an engine-core process (and, on CPU, OpenMP workers); they share
    the leader's process group because the leader was started with ``start_new_session``.
    """
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_members(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _KILL_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_members(pgid):
            return
        time.sleep(0.1)
    left = group_members(pgid)
    if left:
        raise EngineError(f"engine process group {pgid} survived SIGKILL: pids {left}")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux only).

    The engine runs in its own session so that it can be stopped as a group; this keeps a
    parent killed with SIGKILL (no ``__exit__``) from leaving it running. The signal is tied
    to the thread that started the child, so servers are started from the main thread.
    """
    try:

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def popen_kwargs(engine: EngineSpec | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        cores = engine_cores(engine) if engine is not None else None

        def prepare() -> None:
            _die_with_parent()
            if cores:
                os.sched_setaffinity(0, cores)

        kw["preexec_fn"] = prepare
    return kw


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(text: str, n: int = 20) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def describe_exit(proc: subprocess.Popen[bytes] | None) -> str:
    """How a process ended (``killed by SIGKILL``, ``exit code 1``), or ``running``;
    ``stopped`` for None (a stopped server keeps no process)."""
    if proc is None:
        return "stopped"
    code = proc.poll()
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
