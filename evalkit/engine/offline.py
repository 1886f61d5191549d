"""Offline batches through ``vllm.LLM`` in a child process (``python -m evalkit.engine offline``)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.core.environment import hardware_label
from evalkit.core.errors import EngineError
from evalkit.core.io import atomic_write_json, read_json
from evalkit.core.specs import EngineSpec
from evalkit.engine.checkpoint import check_checkpoint
from evalkit.engine.logparse import classify_failure
from evalkit.engine.options import engine_env, engine_kwargs
from evalkit.engine.process import popen_kwargs, stop_process_group


def run_offline(
    model_path: str | Path,
    *,
    engine: EngineSpec,
    points: Iterable[Mapping[str, int]],
    out_path: Path,
    log_path: Path,
    iters: int = 3,
    warmups: int = 1,
    seed: int = 0,
    load_format: str | None = None,
    tokenizer: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    trust_remote_code: bool = False,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """Offline batch latency with ``vllm.LLM``, one engine in a child process.

    For every point (``batch_size``, ``input_len``, ``output_len``) the child builds
    ``batch_size`` prompts of exactly ``input_len`` random token ids, runs ``warmups``
    untimed iterations, then ``iters`` timed iterations of

    * ``max_tokens=1``: the batch's time to first token (prefill plus one step), ``ttft_s``;
    * ``max_tokens=output_len`` with ``ignore_eos``: the batch's end-to-end time, ``e2e_s``;

    every call (warm-ups included) with prompts of its own, so no timed prefill can be
    served from the prefix cache; each row also carries ``prompt_tokens`` and
    ``cached_tokens`` (vLLM's per-request ``num_cached_tokens``) of its two timed calls;

    and ``tpot_s = (e2e_s - ttft_s) / (output_len - 1)``: decode time per output token,
    first token excluded, the reading of ``vllm bench latency`` (NaN for ``output_len`` 1).

    ``vllm bench latency`` itself is not used because it builds a new engine for every
    invocation, i.e. for every batch size and shape; here one engine serves all points of
    a variant. The engine runs in a child process because vLLM does not give its memory
    back inside a process that keeps running.

    Args:
        model_path: checkpoint directory.
        engine: engine options.
        points: dicts with ``batch_size``, ``input_len``, ``output_len``.
        out_path: JSON file the per-iteration rows are written to (atomically).
        log_path: file receiving the child's output.
        iters: timed iterations per point.
        warmups: untimed iterations per point.
        seed: seed for the random prompts.
        load_format: vLLM load format (``dummy`` for random-weight presets).
        tokenizer: tokenizer directory if not the checkpoint's.
        extra_env: extra environment for the child.
        trust_remote_code: allow checkpoint code.
        timeout_s: wall-clock limit (default: startup timeout + 60 s per point).

    Returns:
        The rows written to ``out_path``.

    Raises:
        UnsupportedSchemeError: no kernel for the checkpoint here.
        EngineError: the child failed or timed out.
    """
    check_checkpoint(model_path, weights=load_format != "dummy")
    pts = [dict(point) for point in points]
    spec = {
        "model": str(model_path), "points": pts, "iters": iters, "warmups": warmups,
        "seed": seed, "out": str(out_path),
        "engine_kwargs": engine_kwargs(engine, load_format=load_format, tokenizer=tokenizer,
                                       trust_remote_code=trust_remote_code),
    }
    log_path = Path(log_path)
    spec_path = log_path.with_suffix(".spec.json")
    atomic_write_json(spec_path, spec)
    run_engine_child("offline", spec_path, engine=engine, log_path=log_path,
                     limit_s=timeout_s if timeout_s is not None
                     else engine.startup_timeout_s + 60 * len(pts),
                     what=f"offline vLLM engine for {model_path}", model_path=model_path,
                     extra_env=extra_env)
    return list(read_json(out_path)["rows"])


def run_engine_child(command: str, spec_path: Path, *, engine: EngineSpec, log_path: Path,
                     limit_s: float, what: str, model_path: str | Path,
                     extra_env: dict[str, str] | None = None) -> None:
    """Run ``python -m evalkit.engine COMMAND --spec SPEC`` to its end: a vLLM engine in a
    child process (vLLM gives its memory back only when its process ends), its output
    appended to ``log_path``, its whole process group stopped afterwards.

    Raises:
        EngineError: it could not start, ran past ``limit_s`` or exited non-zero (classified
            from its log: an unsupported scheme, a refused setting, ...).
    """
    cmd = [sys.executable, "-m", "evalkit.engine", command, "--spec", str(spec_path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=engine_env(engine, extra_env), **popen_kwargs(engine),
            )
        except OSError as exc:
            raise EngineError(f"cannot start the {what} ({exc.strerror or exc})") from None
        try:
            code: int | None = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_process_group(proc)
    if code != 0:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        raise classify_failure(text, what=what, model_path=model_path,
                               hardware=hardware_label(engine.device), log_path=log_path,
                               returncode=code)


def shutdown_llm(llm: Any) -> None:
    """Stop an in-process ``vllm.LLM``'s engine-core process now.

    Left to interpreter exit, the engine core is a non-daemon multiprocessing child, and
    whether vLLM's finalizer stops it before :mod:`multiprocessing` joins it depends on the
    order the two registered their exit hooks: when the join comes first, the process never
    exits. A vLLM without that client (no ``engine_core.shutdown``) is left to its own exit.
    """
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if callable(getattr(core, "shutdown", None)):
        core.shutdown()


def offline_child(spec_path: Path) -> None:
    """Body of ``python -m evalkit.engine offline``: runs inside the child process."""
    from vllm import LLM  # noqa: PLC0415

    spec = read_json(spec_path)
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], seed=spec["seed"], **spec["engine_kwargs"])
    try:
        _offline_points(llm, spec, time.perf_counter() - t0)
    finally:
        shutdown_llm(llm)


def _offline_points(llm: Any, spec: dict[str, Any], startup_s: float) -> None:
    """The timed batches of :func:`offline_child`, written to ``spec["out"]``."""
    from vllm import SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    vocab = llm.get_tokenizer().vocab_size
    rng = np.random.default_rng(spec["seed"])
    # Ids from the lower part of the vocabulary avoid special/added tokens at the end,
    # as vllm bench latency does with randint(10000).
    high = max(2, min(vocab, 10000))
    rows: list[dict[str, Any]] = []
    for p in spec["points"]:
        bs, n_in, n_out = int(p["batch_size"]), int(p["input_len"]), int(p["output_len"])

        def fresh(bs: int = bs, n_in: int = n_in) -> list[TokensPrompt]:
            # Every generate() call gets prompts of its own (warm-ups too): a prompt seen
            # before could be served from the prefix cache, and its prefill would not be timed.
            return [TokensPrompt(prompt_token_ids=rng.integers(1, high, n_in).tolist())
                    for _ in range(bs)]

        first = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
        full = SamplingParams(max_tokens=n_out, ignore_eos=True, temperature=0.0)
        for _ in range(spec["warmups"]):
            llm.generate(fresh(), full, use_tqdm=False)
        for it in range(spec["iters"]):
            t = time.perf_counter()
            head = llm.generate(fresh(), first, use_tqdm=False)
            ttft = time.perf_counter() - t
            t = time.perf_counter()
            outs = llm.generate(fresh(), full, use_tqdm=False)
            e2e = time.perf_counter() - t
            produced = [len(o.outputs[0].token_ids) for o in outs]
            timed = [*head, *outs]
            rows.append({
                "batch_size": bs, "input_len": n_in, "output_len": n_out, "iter": it,
                "ttft_s": ttft, "e2e_s": e2e,
                "tpot_s": (e2e - ttft) / (n_out - 1) if n_out > 1 else math.nan,
                "output_tokens": int(sum(produced)), "min_output_tokens": int(min(produced)),
                "prompt_tokens": int(sum(len(o.prompt_token_ids or []) for o in timed)),
                "cached_tokens": int(sum(o.num_cached_tokens or 0 for o in timed)),
            })
    atomic_write_json(spec["out"], {"rows": rows, "startup_s": startup_s})
