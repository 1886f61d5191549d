"""Processes a test started, found by a marker in their environment: the tests set
``MARK=token`` for what they start (a run, its kernels, its engines inherit it) and look for
live engine or kernel processes that carry it."""

from __future__ import annotations

import os
import re
from pathlib import Path

ENGINE_PROC = re.compile(r"vllm|VLLM|EngineCore|ipykernel")


def marked_processes(mark: str, token: str) -> list[str]:
    """Live (not zombie) engine or kernel processes, other than this one, whose environment
    carries ``mark=token``: ``"PID COMM: CMDLINE"`` each."""
    want = f"{mark}={token}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if want not in (d / "environ").read_bytes():
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if state != "Z" and ENGINE_PROC.search(f"{comm} {cmd}"):
            found.append(f"{d.name} {comm}: {cmd[:160]}")
    return found
