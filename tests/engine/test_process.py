"""evalkit.engine.process: a real process group (a shell and its child) stopped as a whole,
how a process ended, and the last lines of a log."""

from __future__ import annotations

import subprocess
import sys
import time

from evalkit.engine.process import (
    describe_exit,
    free_port,
    group_members,
    log_tail,
    popen_kwargs,
    stop_process_group,
)


def test_stop_process_group_leaves_no_member():
    # a parent that forks a child and both ignore nothing: SIGTERM must reach the child too
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
           "'import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], **popen_kwargs())
    deadline = time.monotonic() + 20
    while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(proc.pid)) == 2  # the leader and its child share the group
    stop_process_group(proc, grace_s=5)
    assert group_members(proc.pid) == [] and proc.poll() is not None
    assert describe_exit(proc) == "killed by SIGTERM"


def test_describe_exit_names_how_it_ended():
    ended = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    ended.wait()
    assert describe_exit(ended) == "exit code 3"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert describe_exit(running) == "running"
    finally:
        running.kill()
        running.wait()
    assert describe_exit(None) == "stopped"


def test_log_tail_and_free_port():
    text = "\n".join(f"l{i}" for i in range(30))
    assert log_tail(text, 3).splitlines() == ["l27", "l28", "l29"]
    port = free_port()
    assert 1024 < port < 65536
