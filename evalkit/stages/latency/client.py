"""The benchmark client side of a server point: prompt seeds, ``vllm bench serve`` argument
lists, warm-up waves, and running vLLM's client in-process.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import threading
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evalkit import engine as eng
from evalkit.core.errors import EngineError
from evalkit.core.specs import Workload
from evalkit.core.units import rate_label


def prompt_seed(seed: int, workload: str, concurrency: int, request_rate: float, trial: int,
                role: str = "timed") -> int:
    """The seed of one point's prompts: distinct per workload, concurrency, rate, trial and
    role (``timed`` or ``warmup``), the same for every variant (variants see the same
    prompts, each on its own server).

    A server keeps what it prefilled: a point that reused another point's prompts, or a
    trial its warm-up's, would be served from the prefix cache where caching is on.
    """
    key = f"{workload}|c{int(concurrency)}|r{rate_label(float(request_rate))}|t{trial}|{role}"
    return (int(seed) + zlib.crc32(key.encode())) % (2**31 - 1)


def bench_command(
    *, base_url: str, served_model_name: str, tokenizer: str | Path, workload: Workload,
    concurrency: int | None, request_rate: float, num_prompts: int, seed: int,
    result_dir: Path, result_filename: str, trust_remote_code: bool = False,
    dataset_path: Path | None = None, burstiness: float = 1.0,
) -> list[str]:
    """The arguments of ``vllm bench serve`` for one trial of a point (vLLM's own flags).

    Fixed lengths use vLLM's ``random`` dataset with ``--random-range-ratio 0``; a workload
    whose prompt and output lengths are both uniform with one ratio uses the same dataset
    with that ratio. Any other mix (lognormal, empirical, or one side fixed) is written by
    evalkit as a JSONL file (:mod:`evalkit.assets.mixes`) and read by vLLM's ``custom``
    dataset with per-request output lengths (``dataset_path``): vLLM's random dataset draws
    uniform lengths only. ``concurrency`` None sends without a client-side cap.
    """
    cmd = [
        "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", served_model_name, "--tokenizer", str(tokenizer),
    ]
    if dataset_path is not None:
        cmd += ["--dataset-name", "custom", "--dataset-path", str(dataset_path),
                "--custom-output-len", "-1", "--skip-chat-template", "--disable-shuffle"]
    else:
        ratio = vllm_range_ratio(workload)
        if ratio is None:
            raise EngineError(f"workload {workload.name}: its length mix needs a prompt file "
                              "(vLLM's random dataset draws uniform lengths only)")
        cmd += ["--dataset-name", "random",
                "--random-input-len", str(workload.input_len),
                "--random-output-len", str(workload.output_len),
                "--random-range-ratio", repr(ratio)]
    cmd += ["--num-prompts", str(num_prompts)]
    if concurrency is not None:
        cmd += ["--max-concurrency", str(concurrency)]
    cmd += ["--request-rate", "inf" if math.isinf(request_rate) else repr(float(request_rate))]
    if not math.isinf(request_rate) and burstiness != 1.0:
        cmd += ["--burstiness", repr(float(burstiness))]
    cmd += [
        "--ignore-eos",
        # Warm-up requests are sent by evalkit before the /metrics scrape, so the server's
        # histograms hold exactly the measured requests.
        "--num-warmups", "0",
        "--seed", str(seed),
        "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(result_dir), "--result-filename", result_filename,
        "--disable-tqdm",
    ]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd


def vllm_range_ratio(workload: Workload) -> float | None:
    """The ``--random-range-ratio`` that draws the workload's lengths with vLLM's own random
    dataset: 0 for fixed lengths, r when both sides are uniform with ratio r; None when the
    mix needs an evalkit prompt file."""
    i, o = workload.input, workload.output
    if i.dist == "fixed" and o.dist == "fixed":
        return 0.0
    if i.dist == o.dist == "uniform" and i.range_ratio == o.range_ratio:
        return float(i.range_ratio or 0.0)
    return None


def warm_up(base_url: str, served_model_name: str, workload: Workload, n: int, *,
            concurrency: int, vocab_size: int, seed: int, timeout_s: float = 600) -> None:
    """Send ``n`` completions of the workload's shape (token-id prompts), ``concurrency`` at
    a time, and wait for them; raise EngineError if one fails."""
    if n <= 0:
        return
    rng = random.Random(seed)
    high = max(2, min(vocab_size, 10000))
    prompts = [[rng.randrange(1, high) for _ in range(workload.input_len)] for _ in range(n)]

    def one(prompt: list[int]) -> None:
        body = json.dumps({
            "model": served_model_name,
            "prompt": prompt,
            "max_tokens": workload.output_len, "ignore_eos": True, "temperature": 0,
        }).encode()
        req = urllib.request.Request(base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            hint = (f" after {timeout_s:.0f} s (latency.request_timeout_s: raise it, or leave "
                    "this scheme out on this hardware)" if "timed out" in str(exc) else "")
            raise EngineError(f"warm-up request to {base_url} failed: {exc}{hint}") from None

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
        list(pool.map(one, prompts))


def run_bench(argv: list[str], *, log_path: Path, timeout_s: float, hint: str = "") -> None:
    """Run vLLM's serving benchmark client (``vllm bench serve``) on ``argv``, in this process.

    It is vLLM's own parser and ``main`` (see :func:`evalkit.engine.bench_serve`), run in a
    worker thread with its own event loop (a notebook kernel already runs one) and its
    output sent to ``log_path``. In-process because a fresh client process spends tens of
    seconds importing vLLM for every point; the requests and the timing code are the same.

    Raises:
        EngineError: the client raised or did not finish within ``timeout_s``.
    """

    from vllm.benchmarks.serve import main as serve_main  # noqa: PLC0415

    args = eng.bench_parser().parse_args(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    error: list[BaseException] = []

    def target() -> None:
        with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            print(f"# evalkit: vllm bench serve {' '.join(argv)}", flush=True)
            try:
                serve_main(args)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
                error.append(exc)

    worker = threading.Thread(target=target, name="vllm-bench-serve", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive() or error:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        how = (f"timed out after {timeout_s:.0f} s{hint}" if worker.is_alive()
               else f"raised {error[0]!r}")
        raise EngineError(f"vllm bench serve {how} (log: {log_path})\n"
                          f"--- last log lines ---\n{eng.log_tail(text)}")
