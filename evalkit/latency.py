"""Latency stage: vLLM serving sweeps (TTFT, TPOT, ITL, E2E) for every variant.

Server mode (the main one) starts one OpenAI server per variant and, for each workload x
concurrency x request-rate point, runs vLLM's own benchmark client (``vllm bench serve``)
against it with ``--save-detailed``. evalkit's records are recomputed from the client's
per-request data with vLLM's definitions:

* TTFT per request: time from sending the request to the first streamed token.
* TPOT per request: ``(latency - TTFT) / (output_tokens - 1)``, first token excluded;
  NaN for a 1-token output (vLLM drops those from its TPOT list).
* ITL: the gaps between streamed chunks, pooled over all requests (per chunk, not per
  request).
* E2E latency per request.

Failed requests are counted (``failed_requests``), never dropped silently and never
turned into 0 ms. When ``latency.scrape_metrics`` is on, the server's Prometheus
histograms are diffed around each point and recorded beside the client figures
(``mode="server-metrics"``). Offline mode times whole batches through ``vllm.LLM`` (see
:func:`evalkit.engine.run_offline`).

Raw data per variant lives in ``raw/latency/<variant>/``: the client's detailed JSON per
point, ``<point>.summary.json`` (the client's own summary next to evalkit's figures),
``provenance.json`` (kernels, backend, graphs, versions from the engine log), the engine
log, and one Parquet file per finished point (what resume reuses).
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit import engine as eng
from evalkit import records as rec
from evalkit.config import LatencySpec, StudyConfig, Variant, Workload
from evalkit.errors import EngineError, EvalkitError, StageError, UnsupportedSchemeError
from evalkit.io import atomic_write_json, read_json
from evalkit.rundir import Run, _safe, environment_info, hardware_label
from evalkit.schemes import SCHEMES, Scheme, activation_mismatch

STAGE = "latency"

#: Peak memory bandwidth in GB/s (vendor figures) for the decode roofline.
BANDWIDTH_GBPS: dict[str, float] = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "GH200": 4000.0,
    "A100 SXM 80GB": 2039.0,
    "A100 PCIe 80GB": 1935.0,
    "A100 40GB": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


# --------------------------------------------------------------------------------------
# pure metric code


def tpot_s(latency_s: float, ttft_s: float, output_tokens: int) -> float:
    """Time per output token of one request, vLLM's definition.

    ``(latency - ttft) / (output_tokens - 1)``: the decode phase per token, first token
    excluded. NaN when it cannot be computed (one or no output token, missing times).
    """
    if output_tokens is None or output_tokens <= 1:
        return math.nan
    if latency_s is None or ttft_s is None or math.isnan(latency_s) or math.isnan(ttft_s):
        return math.nan
    return (latency_s - ttft_s) / (output_tokens - 1)


def per_request_metrics(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Per-request figures from a ``vllm bench serve --save-detailed`` result.

    Args:
        detail: the saved JSON (fields ``ttfts``, ``itls``, ``latencies``, ``output_lens``,
            ``input_lens``, ``errors`` per request, and ``duration``). Without
            ``latencies`` (vLLM 0.24's client), latency = TTFT + sum(ITL) per request.

    Returns:
        dict with ``ttft_ms``, ``tpot_ms``, ``e2el_ms`` (one value per successful request;
        TPOT NaN for 1-token outputs), ``itl_ms`` (all chunk gaps of successful requests),
        ``completed``, ``failed``, ``output_tokens``, ``input_tokens``, ``duration_s`` and
        ``errors`` (the distinct error messages).
    """
    errors = list(detail.get("errors") or [])
    n = len(errors)
    ttfts = list(detail.get("ttfts") or [math.nan] * n)
    outs = list(detail.get("output_lens") or [0] * n)
    ins = list(detail.get("input_lens") or [0] * n)
    itls = list(detail.get("itls") or [[] for _ in range(n)])
    if detail.get("latencies"):
        lats = list(detail["latencies"])
    else:
        # Older clients (vLLM 0.24) save no per-request latency. Their streaming client
        # takes TTFT as the first chunk's arrival and each ITL as the gap to the previous
        # chunk, so the request's latency is exactly TTFT + sum(ITL) for a streamed request.
        lats = [t + sum(g) if t is not None and len(g) else math.nan
                for t, g in zip(ttfts, itls, strict=False)]
    if not (len(ttfts) == len(lats) == len(outs) == n):
        raise StageError(
            f"benchmark result has per-request lists of different lengths "
            f"(errors {n}, ttfts {len(ttfts)}, latencies {len(lats)}, output_lens {len(outs)})"
        )
    ok = [not e for e in errors]
    res: dict[str, Any] = {"ttft_ms": [], "tpot_ms": [], "e2el_ms": [], "itl_ms": []}
    for i in range(n):
        if not ok[i]:
            continue
        res["ttft_ms"].append(ttfts[i] * 1e3)
        res["e2el_ms"].append(lats[i] * 1e3)
        res["tpot_ms"].append(tpot_s(lats[i], ttfts[i], outs[i]) * 1e3)
        res["itl_ms"].extend(g * 1e3 for g in itls[i])
    res["completed"] = sum(ok)
    res["failed"] = n - sum(ok)
    res["output_tokens"] = int(sum(o for o, k in zip(outs, ok, strict=True) if k))
    res["input_tokens"] = int(sum(x for x, k in zip(ins, ok, strict=True) if k))
    res["duration_s"] = float(detail.get("duration", math.nan))
    res["errors"] = sorted({e for e in errors if e})
    return res


def point_rows(m: Mapping[str, Any], **fields: Any) -> list[dict[str, Any]]:
    """Records for one server point from :func:`per_request_metrics`."""
    rows: list[dict[str, Any]] = []
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        rows += rec.percentile_rows(m[metric], metric=metric, unit="ms",
                                    higher_is_better=False, **fields)
    dur = m["duration_s"]
    ok_dur = dur > 0 and not math.isnan(dur)
    rows += [
        dict(metric="output_throughput_tok_s", stat="value", unit="tok/s",
             higher_is_better=True, n=m["completed"],
             value=m["output_tokens"] / dur if ok_dur and m["completed"] else math.nan, **fields),
        dict(metric="request_throughput_req_s", stat="value", unit="req/s",
             higher_is_better=True, n=m["completed"],
             value=m["completed"] / dur if ok_dur and m["completed"] else math.nan, **fields),
        dict(metric="completed_requests", stat="value", unit="count", higher_is_better=True,
             value=float(m["completed"]), n=m["completed"] + m["failed"], **fields),
        dict(metric="failed_requests", stat="value", unit="count", higher_is_better=False,
             value=float(m["failed"]), n=m["completed"] + m["failed"],
             note="; ".join(m["errors"])[:500] or None, **fields),
    ]
    return rows


#: Server histogram -> (record metric, factor to ms). The first histogram present wins.
SERVER_HISTOGRAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ttft_ms", ("vllm:time_to_first_token_seconds",)),
    ("tpot_ms", ("vllm:request_time_per_output_token_seconds",
                 "vllm:time_per_output_token_seconds")),
    ("itl_ms", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
    ("e2el_ms", ("vllm:e2e_request_latency_seconds",)),
)


def server_metric_rows(delta: Mapping[str, Mapping[str, float]], **fields: Any
                       ) -> list[dict[str, Any]]:
    """Records from a :func:`evalkit.engine.metrics_delta` (server-side, from histograms).

    Means are exact (sum / count); percentiles are interpolated inside Prometheus buckets,
    so they are only as fine as vLLM's bucket bounds.
    """
    rows: list[dict[str, Any]] = []
    for metric, names in SERVER_HISTOGRAMS:
        name = next((n for n in names if n in delta), None)
        d = delta.get(name, {}) if name else {}
        count = d.get("count", 0.0)
        for stat in ("mean", "p50", "p90", "p99"):
            v = d.get(stat, math.nan)
            rows.append(dict(metric=metric, stat=stat, unit="ms", higher_is_better=False,
                             value=v * 1e3 if count else math.nan, n=int(count),
                             note=name or "histogram not exported", **fields))
    succ = delta.get("vllm:request_success_total", {}).get("value", math.nan)
    rows.append(dict(metric="completed_requests", stat="value", unit="count",
                     higher_is_better=True, value=succ, n=None,
                     note="vllm:request_success_total increase", **fields))
    return rows


def offline_rows(iters: list[Mapping[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """Records for one offline point from :func:`evalkit.engine.run_offline` rows.

    ``ttft_ms`` is the batch's time to its first token, ``e2el_ms`` the batch's end-to-end
    time, ``tpot_ms`` ``(e2e - ttft) / (output_len - 1)``; stats are over iterations.
    ``output_throughput_tok_s`` is generated tokens / e2e time per iteration.
    """
    rows: list[dict[str, Any]] = []
    for metric, key in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"), ("e2el_ms", "e2e_s")):
        rows += rec.percentile_rows([r[key] * 1e3 for r in iters], metric=metric, unit="ms",
                                    higher_is_better=False, **fields)
    rows += rec.percentile_rows(
        [r["output_tokens"] / r["e2e_s"] for r in iters if r["e2e_s"] > 0],
        metric="output_throughput_tok_s", unit="tok/s", higher_is_better=True,
        stats=("mean",), **fields)
    return rows


# --------------------------------------------------------------------------------------
# roofline


def gpu_bandwidth_gbps(name: str) -> float | None:
    """Peak bandwidth for a GPU name as nvidia-smi prints it (None if not in the table).

    ``NVIDIA H100 80GB HBM3`` is the SXM part; the PCIe card reports ``H100 PCIe``.
    """
    n = name.upper()
    if "GH200" in n:
        return BANDWIDTH_GBPS["GH200"]
    if "H200" in n:
        return BANDWIDTH_GBPS["H200"]
    if "H100" in n:
        if "PCIE" in n:
            return BANDWIDTH_GBPS["H100 PCIe"]
        if "NVL" in n:
            return BANDWIDTH_GBPS["H100 NVL"]
        return BANDWIDTH_GBPS["H100 SXM"]
    if "A100" in n:
        if "40GB" in n:
            return BANDWIDTH_GBPS["A100 40GB"]
        return BANDWIDTH_GBPS["A100 PCIe 80GB" if "PCIE" in n else "A100 SXM 80GB"]
    if "L40S" in n:
        return BANDWIDTH_GBPS["L40S"]
    if "L4" in n.split():
        return BANDWIDTH_GBPS["L4"]
    return None


def cpu_copy_bandwidth_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Rough STREAM-copy estimate of CPU memory bandwidth (GB/s), best of ``repeats``.

    Copies a ``mib`` MiB array with numpy and counts read plus write bytes. One thread,
    shared machine: a lower bound on what the engine's threads can draw, not a peak.
    """
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def memory_bandwidth(device: str) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) for the engine device."""
    if device == "cuda":
        from evalkit.rundir import gpu_info  # noqa: PLC0415

        gpus = gpu_info()
        if not gpus:
            return None, "no GPU found"
        bw = gpu_bandwidth_gbps(gpus[0]["name"])
        return bw, (f"vendor peak for {gpus[0]['name']}" if bw else
                    f"{gpus[0]['name']} not in BANDWIDTH_GBPS")
    return cpu_copy_bandwidth_gbps(), "numpy copy estimate (rough STREAM-copy, 1 thread)"


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config.get("text_config") or config


def _moe_shape(c: Mapping[str, Any]) -> tuple[int, int, int]:
    """(routed experts, experts per token, expert intermediate size); (0, 0, 0) if dense."""
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    if experts <= 1:
        return 0, 0, 0
    topk = int(c.get("num_experts_per_tok") or 1)
    inter = int(c.get("moe_intermediate_size") or c["intermediate_size"])
    return experts, topk, inter


def _linear_bytes(shapes: Iterable[tuple[int, int]], s: Scheme) -> float:
    """Bytes of linear layers (in_features, out_features) under scheme ``s``."""
    total = 0.0
    for fin, fout in shapes:
        params = fin * fout
        if s.is_base:
            total += params * 2
            continue
        groups = (fin // s.group_size) * fout if s.group_size else fout
        total += params * s.weight_bits / 8 + groups * 2
    return total


def weight_bytes_split(config: Mapping[str, Any], scheme: Scheme | str) -> tuple[float, float]:
    """(bytes read by every token, bytes of all routed experts) of a decoder under ``scheme``.

    Linear layers of the decoder blocks (q, k, v, o and the MLP's gate, up, down) take
    ``params x weight_bits / 8`` plus one 16-bit scale per group (or per output channel);
    embeddings, the LM head (left unquantized), routers and norms stay 16-bit. For a
    mixture-of-experts config (``num_experts``/``num_local_experts``) the MLP is one
    gate/up/down triple per routed expert (``moe_intermediate_size``), plus a shared expert
    where the config has one; the second figure is 0 for dense models.
    """
    s = SCHEMES[scheme] if isinstance(scheme, str) else scheme
    c = _text_config(config)
    h = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    vocab = int(c["vocab_size"])
    attn = _linear_bytes([(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h)], s)
    experts, _, e_inter = _moe_shape(c)
    if experts:
        shared = int(c.get("shared_expert_intermediate_size") or 0)
        mlp = _linear_bytes([(h, shared), (h, shared), (shared, h)], s) if shared else 0.0
        mlp += h * experts * 2  # router, 16-bit
        routed = experts * _linear_bytes([(h, e_inter), (h, e_inter), (e_inter, h)], s)
    else:
        inter = int(c["intermediate_size"])
        mlp = _linear_bytes([(h, inter), (h, inter), (inter, h)], s)
        routed = 0.0
    emb = vocab * h * 2
    tied = config.get("tie_word_embeddings", c.get("tie_word_embeddings", True))
    head = 0 if tied else vocab * h * 2
    norms = (2 * layers + 1) * h * 2
    return layers * (attn + mlp) + emb + head + norms, layers * routed


def estimate_weight_bytes(config: Mapping[str, Any], scheme: Scheme | str) -> int:
    """Bytes of all of a decoder's weights under ``scheme`` (see :func:`weight_bytes_split`)."""
    always, routed = weight_bytes_split(config, scheme)
    return int(always + routed)


def weight_read_fraction(config: Mapping[str, Any] | None, scheme: Scheme | str,
                         batch: int) -> float:
    """Share of all weight bytes one decode step of ``batch`` sequences must read.

    1 for dense models. For mixture-of-experts models only the routed experts some token
    picked are read: with ``E`` experts, ``k`` per token and routing assumed uniform and
    independent, ``E x (1 - (1 - k/E)^batch)`` distinct experts per layer are expected.
    """
    if config is None:
        return 1.0
    c = _text_config(config)
    experts, topk, _ = _moe_shape(c)
    if not experts:
        return 1.0
    always, routed = weight_bytes_split(config, scheme)
    touched = 1.0 - (1.0 - min(topk, experts) / experts) ** max(batch, 1)
    return (always + routed * touched) / (always + routed)


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token occupies (K and V, all layers)."""
    c = _text_config(config)
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    return 2 * int(c["num_hidden_layers"]) * kv * hd * dtype_bytes


def decode_bytes_per_step(weight_bytes: float, *, kv_bytes_token: float = 0.0,
                          context_tokens: float = 0.0, batch: int = 1) -> float:
    """Bytes one decode step must read: all weights once, plus every sequence's KV cache.

    ``weight_bytes + batch x context_tokens x kv_bytes_token``.
    """
    return float(weight_bytes) + batch * context_tokens * kv_bytes_token


def roofline_tpot_ms(bytes_per_step: float, gbps: float | None) -> float:
    """Memory-bound lower bound on TPOT: bytes per step / bandwidth, in ms (NaN if unknown)."""
    if not gbps or gbps <= 0 or math.isnan(gbps):
        return math.nan
    return bytes_per_step / (gbps * 1e9) * 1e3


# --------------------------------------------------------------------------------------
# the benchmark client


def bench_command(
    *, base_url: str, served_model_name: str, tokenizer: str | Path, workload: Workload,
    concurrency: int, request_rate: float, num_prompts: int, seed: int, result_dir: Path,
    result_filename: str, trust_remote_code: bool = False,
) -> list[str]:
    """The arguments of ``vllm bench serve`` for one point (vLLM's own flags, unchanged)."""
    cmd = [
        "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", served_model_name, "--tokenizer", str(tokenizer),
        "--dataset-name", "random",
        "--random-input-len", str(workload.input_len),
        "--random-output-len", str(workload.output_len),
        "--random-range-ratio", "0",
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf" if math.isinf(request_rate) else repr(float(request_rate)),
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
            raise EngineError(f"warm-up request to {base_url} failed: {exc}") from None

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
        list(pool.map(one, prompts))


def run_bench(argv: list[str], *, log_path: Path, timeout_s: float) -> None:
    """Run vLLM's serving benchmark client (``vllm bench serve``) on ``argv``, in this process.

    It is vLLM's own parser and ``main`` (see :func:`evalkit.engine.bench_serve`), run in a
    worker thread with its own event loop (a notebook kernel already runs one) and its
    output sent to ``log_path``. In-process because a fresh client process spends tens of
    seconds importing vLLM for every point; the requests and the timing code are the same.

    Raises:
        EngineError: the client raised or did not finish within ``timeout_s``.
    """
    import contextlib  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from vllm.benchmarks.serve import add_cli_args  # noqa: PLC0415
    from vllm.benchmarks.serve import main as serve_main  # noqa: PLC0415
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(argv)
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
        how = "timed out" if worker.is_alive() else f"raised {error[0]!r}"
        raise EngineError(f"vllm bench serve {how} (log: {log_path})\n"
                          f"--- last log lines ---\n{eng._tail(text)}")


BENCH_SUMMARY_KEYS = (
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput", "total_token_throughput",
)


def bench_summary(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The client's own summary figures (``mean_ttft_ms``, ``p99_tpot_ms``, ...)."""
    return {k: v for k, v in detail.items()
            if k in BENCH_SUMMARY_KEYS or (k.endswith("_ms") and not isinstance(v, list))}


# --------------------------------------------------------------------------------------
# the stage


def _rate_label(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:g}"


def point_stem(workload: str, concurrency: int, request_rate: float) -> str:
    """File stem of one server-mode point's raw data under ``raw/latency/<variant>/``
    (``<stem>.json`` per-request data, ``<stem>.summary.json`` client summary + /metrics)."""
    return f"{workload}_c{int(concurrency)}_r{_rate_label(float(request_rate))}"


def point_key(variant: str, mode: str, workload: str, concurrency: int,
              request_rate: float) -> str:
    """Resume unit key of one latency point."""
    return f"{variant}/{mode}/{workload}/c{concurrency}/r{_rate_label(request_rate)}"


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in _TOKENIZER_FILES)


class _Stage:
    """State of one latency stage run (kept out of module globals)."""

    def __init__(self, cfg: StudyConfig, run: Run, checkpoints: Mapping[str, Path] | None,
                 resolved: Any | None) -> None:
        if cfg.latency is None:
            raise StageError("the study has no latency section; nothing to measure")
        self.cfg, self.run, self.lat = cfg, run, cfg.latency
        if resolved is None:
            from evalkit.assets import resolve_model  # noqa: PLC0415

            resolved = resolve_model(cfg.model)
        self.model = resolved
        self.checkpoints = dict(checkpoints) if checkpoints is not None else None
        self.hardware = hardware_label(cfg.engine.device)
        self.raw = run.path / "raw" / STAGE
        self.frames: list[pd.DataFrame] = []
        self.failures: list[str] = []
        self.unsupported: list[str] = []
        self.bandwidth: tuple[float | None, str] | None = None
        self.quant_weight_bytes = self._quantize_weight_bytes()

    # ---- helpers
    def checkpoint(self, v: Variant) -> Path:
        if self.checkpoints is not None:
            if v.name not in self.checkpoints:
                raise StageError(f"no checkpoint given for variant '{v.name}'")
            return Path(self.checkpoints[v.name])
        from evalkit.quantize import checkpoint_for  # noqa: PLC0415

        return Path(checkpoint_for(self.run, v.name))

    def tokenizer_for(self, ckpt: Path) -> Path:
        if _has_tokenizer(ckpt):
            return ckpt
        base = getattr(self.model, "path", None)
        if base is not None and _has_tokenizer(Path(base)):
            return Path(base)
        raise StageError(f"{ckpt}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in the "
                         f"checkpoint or the model directory")

    def common(self, v: Variant) -> dict[str, Any]:
        return dict(run_id=self.run.run_id, study=self.cfg.study,
                    model=str(getattr(self.model, "name", "") or ""), variant=v.name,
                    scheme=v.scheme, method=v.method, stage=STAGE, backend="vllm",
                    hardware=self.hardware)

    def unit_parquet(self, v: Variant, key: str) -> Path:
        return self.raw / v.name / "units" / f"{_safe(key)}.parquet"

    def save_unit(self, v: Variant, key: str, df: pd.DataFrame, status: str) -> None:
        p = rec.write_records(df, self.unit_parquet(v, key))
        self.frames.append(df)
        self.run.mark_unit(STAGE, key, {"records": str(p.relative_to(self.run.path)),
                                        "status": status})

    def reuse(self, v: Variant, key: str) -> bool:
        done = self.run.unit_done(STAGE, key)
        if done is None:
            return False
        p = self.run.path / done["records"]
        if not p.is_file():
            self.run.log(f"latency: {key} marked done but {p} is missing; measuring again")
            return False
        self.frames.append(rec.read_records(p))
        self.run.log(f"latency: {key} already measured in this run (an earlier stage or "
                     "attempt); reusing its records")
        return True

    def _quantize_weight_bytes(self) -> dict[str, float]:
        p = self.run.stage_records_path("quantize")
        if not p.is_file():
            return {}
        q = rec.read_records(p)
        q = q[(q["metric"] == "weight_bytes") & (q["status"] == "ok")]
        # presets have no weights to count (NaN): their bytes are estimated from the config
        return {str(r.variant): float(r.value) for r in q.itertuples() if math.isfinite(r.value)}

    def points(self, mode: str) -> list[tuple[Workload, int, float]]:
        rates = self.lat.request_rate if mode == "server" else (math.inf,)
        return [(w, c, r) for w in self.lat.workloads for c in self.lat.levels(w)
                for r in rates]

    def point_fields(self, mode: str, w: Workload, c: int, r: float) -> dict[str, Any]:
        return dict(mode=mode, workload=w.name, concurrency=c, request_rate=r,
                    input_len=w.input_len, output_len=w.output_len)

    def status_rows(self, v: Variant, mode: str, status: str, reason: str) -> None:
        """One NaN record (metric tpot_ms, stat mean) per point that could not be measured."""
        for w, c, r in self.points(mode):
            key = point_key(v.name, mode, w.name, c, r)
            if self.run.unit_done(STAGE, key):
                continue
            df = self.nan_point(v, mode, w, c, r, status, reason)
            if status == "unsupported":
                # Deterministic: a resumed run need not try again.
                self.save_unit(v, key, df, status)
            else:
                self.frames.append(df)

    def roofline(self, v: Variant, ckpt: Path | None
                 ) -> tuple[float, float, Mapping[str, Any] | None]:
        """(weight bytes, kv bytes per token, HF config) for a variant; NaN where unknown."""
        cfg_file = (ckpt / "config.json") if ckpt else None
        config = None
        if cfg_file and cfg_file.is_file():
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        wb = self.quant_weight_bytes.get(v.name)
        if wb is None and config is not None:
            wb = float(estimate_weight_bytes(config, v.scheme))
        kvb = float(kv_bytes_per_token(config)) if config is not None else math.nan
        return (wb if wb is not None else math.nan), kvb, config

    def roofline_rows(self, v: Variant, ckpt: Path | None) -> None:
        if self.bandwidth is None:
            self.bandwidth = memory_bandwidth(self.cfg.engine.device)
        gbps, source = self.bandwidth
        tp = self.cfg.engine.tensor_parallel_size
        if gbps and tp > 1:
            # each GPU streams its own shard of the weights and KV cache
            gbps, source = gbps * tp, f"{source}, x{tp} GPUs (tensor parallel)"
        wb, kvb, config = self.roofline(v, ckpt)
        src = "quantize records" if v.name in self.quant_weight_bytes else "estimated from config"
        read1 = weight_read_fraction(config, v.scheme, 1)
        moe = read1 < 1.0
        roof = roofline_tpot_ms(wb * read1, gbps)
        rows = [dict(metric="roofline_tpot_ms", stat="value", value=roof, unit="ms",
                     higher_is_better=False,
                     note=f"weights only, batch 1; weight bytes {wb:.0f} ({src})"
                          + ("; MoE: only the experts a token is routed to are read" if moe else "")
                          + f"; bandwidth {gbps if gbps else float('nan'):.0f} GB/s ({source})")]
        lat = pd.concat(self.frames, ignore_index=True) if self.frames else rec.empty_records()
        sel = lat[(lat["variant"] == v.name) & (lat["metric"] == "tpot_ms")
                  & (lat["stat"] == "mean") & (lat["status"] == "ok")
                  & (lat["mode"].isin(["server", "offline"]))]
        for r in sel.itertuples():
            ctx = float(r.input_len) + float(r.output_len) / 2
            read = wb * weight_read_fraction(config, v.scheme, int(r.concurrency))
            step = decode_bytes_per_step(read, kv_bytes_token=kvb, context_tokens=ctx,
                                         batch=int(r.concurrency))
            bound = roofline_tpot_ms(step, gbps)
            pct = bound / r.value * 100 if r.value and not math.isnan(r.value) else math.nan
            rows.append(dict(metric="tpot_pct_of_roofline", stat="mean", value=pct, unit="%",
                             higher_is_better=True, mode=r.mode, workload=r.workload,
                             concurrency=r.concurrency, request_rate=r.request_rate,
                             input_len=r.input_len, output_len=r.output_len,
                             note=f"roofline {bound:.4g} ms (weights + KV of {int(r.concurrency)}"
                                  f" sequences at {ctx:g} tokens) / mean TPOT"))
        self.frames.append(rec.make_records(rows, **self.common(v)))

    # ---- server mode
    def todo(self, v: Variant, mode: str, bar: Any) -> list[tuple[Workload, int, float]]:
        """Points of ``mode`` still to measure; finished ones are reused (and counted)."""
        out = []
        for w, c, r in self.points(mode):
            if self.reuse(v, point_key(v.name, mode, w.name, c, r)):
                bar.update(1)
            else:
                out.append((w, c, r))
        return out

    def servers(self, group: list[tuple[Variant, Path]], bar: Any) -> None:
        """Server mode for a group of variants: their servers start side by side
        (``engine.parallel_starts``), then each is measured alone while the others wait idle
        (a waiting vLLM server does no work: its engine blocks on an empty request queue)."""
        opened: list[tuple[Variant, Path, eng.VLLMServer, list[Any]]] = []
        try:
            for v, ckpt in group:
                o = self.launch(v, ckpt, bar)
                if o is not None:
                    opened.append((v, ckpt, *o))
            ready = [o for o in opened if self.wait(o[0], o[2], o[3], bar)]
            if len(opened) > 1:
                self.run.log("latency: servers of " + ", ".join(o[0].name for o in opened)
                             + " started side by side; each is measured alone")
            for v, ckpt, server, todo in ready:
                with server:
                    self.measure(v, server, ckpt, server.log_path, todo, bar,
                                 beside=[o[0].name for o in opened if o[2] is not server])
        finally:
            for o in opened:
                o[2].stop()

    def launch(self, v: Variant, ckpt: Path, bar: Any
               ) -> tuple[eng.VLLMServer, list[tuple[Workload, int, float]]] | None:
        """Start ``v``'s server process unless nothing needs it; (server, points to measure)."""
        todo = self.todo(v, "server", bar)
        startup_file = self.raw / v.name / "startup.parquet"
        if not todo:
            if startup_file.is_file():
                self.frames.append(rec.read_records(startup_file))
            return None
        known = eng.engine_verdict(self.run, v.name)
        if known is not None:
            # another stage of this run already asked the engine; asking again costs a start
            self.run.log(f"latency: {v.name} {known['status']} here (engine said so in stage "
                         f"{known['stage']}): {known['reason']}")
            (self.unsupported if known["status"] == "unsupported" else self.failures).append(
                f"{v.name}: {known['reason']}")
            self.status_rows(v, "server", known["status"], known["reason"])
            bar.update(len(todo))
            return None
        log_path = self.run.sub("logs", f"vllm-server-{v.name}.log")
        extra = dict(kv.split("=", 1) for kv in
                     filter(None, [self.cfg.engine.kernel_override.get(v.name)]))
        tokenizer = self.tokenizer_for(ckpt)
        server = eng.VLLMServer(
            ckpt, engine=self.cfg.engine, log_path=log_path, served_model_name=v.name,
            load_format=getattr(self.model, "load_format", None),
            tokenizer=None if tokenizer == ckpt else tokenizer, extra_env=extra,
            trust_remote_code=self.cfg.model.trust_remote_code,
        )
        self.run.log(f"latency: starting vLLM server for {v.name} ({ckpt})")
        try:
            server.launch()
        except EngineError as exc:
            self.start_failed(v, exc, todo, bar)
            return None
        return server, todo

    def wait(self, v: Variant, server: eng.VLLMServer, todo: list[Any], bar: Any) -> bool:
        """Wait for a launched server; False (and the variant's records) when it cannot serve."""
        try:
            server.wait()
        except EngineError as exc:
            self.start_failed(v, exc, todo, bar)
            return False
        return True

    def start_failed(self, v: Variant, exc: EngineError, todo: list[Any], bar: Any) -> None:
        if isinstance(exc, UnsupportedSchemeError):
            self.run.log(f"latency: {v.name} unsupported here: {exc.reason}")
            eng.record_engine_verdict(self.run, v.name, "unsupported", exc.reason, STAGE)
            self.unsupported.append(f"{v.name}: {exc.reason}")
            self.status_rows(v, "server", "unsupported", exc.reason)
        else:
            first = str(exc).splitlines()[0]
            self.run.log(f"latency: {v.name} server failed: {first}")
            self.failures.append(f"{v.name}: {first}")
            self.status_rows(v, "server", "failed", str(exc))
        bar.update(len(todo))

    def measure(self, v: Variant, server: eng.VLLMServer, ckpt: Path, log_path: Path,
                todo: list[tuple[Workload, int, float]], bar: Any, *,
                beside: Sequence[str] = ()) -> None:
        """Run the server-mode points ``todo`` of variant ``v`` on a running server
        (``beside``: variants whose servers started alongside and wait idle meanwhile)."""
        vdir = self.raw / v.name
        startup_file = vdir / "startup.parquet"
        tokenizer = self.tokenizer_for(ckpt)
        prov = self.write_provenance(v, log_path, server)
        self.run.log(f"latency: {v.name} server up in {server.startup_s:.1f} s "
                     f"({prov.get('linear_kernels') or 'no quantized linear kernel logged'})")
        mismatch = activation_mismatch(v.scheme, prov.get("linear_kernels"))
        if mismatch:
            self.run.log(f"latency: WARNING {v.name}: {mismatch}")
        startup = rec.make_records([dict(
            metric="engine_startup_s", stat="value", value=server.startup_s, unit="s",
            higher_is_better=False, mode="server",
            note="; ".join(f"{k}={prov[k]}" for k in (
                "linear_kernels", "attention_backend", "quantization", "cuda_graphs",
                "compile", "kv_cache_tokens", "vllm_version", "platform") if prov.get(k))
                 + (f"; started side by side with {', '.join(beside)} (idle while this one "
                    "was measured)" if beside else ""))],
            **self.common(v))
        rec.write_records(startup, startup_file)
        self.frames.append(startup)
        vocab = _vocab_size(ckpt)
        restarted = False
        for i, (w, c, r) in enumerate(todo):
            key = point_key(v.name, "server", w.name, c, r)
            try:
                self.server_point(v, server, tokenizer, vdir, key, w, c, r, vocab)
            except EngineError as exc:
                died = not server.alive()
                why = str(exc)
                if died and not why.startswith("vLLM server died"):
                    why = f"vLLM server died during this point ({server.exit_description()}): {why}"
                first = why.splitlines()[0]
                self.run.log(f"latency: {key} failed: {first}")
                self.failures.append(f"{key}: {first}")
                self.point_failed(v, w, c, r, why)
                if died:
                    # One restart per variant: a crash mid-sweep costs that point, not the
                    # rest of the sweep; a server that dies again is not restarted.
                    rest = todo[i + 1:]
                    if rest and not restarted and self.restart(v, server, key):
                        restarted = True
                    else:
                        for w2, c2, r2 in rest:
                            self.point_failed(v, w2, c2, r2, f"not measured: the vLLM server "
                                              f"died at {key} and was not restarted")
                        bar.update(1 + len(rest))
                        break
            bar.update(1)

    def nan_point(self, v: Variant, mode: str, w: Workload, c: int, r: float, status: str,
                  why: str) -> pd.DataFrame:
        """The record of a point that could not be measured: NaN ``tpot_ms`` mean, the reason."""
        return rec.make_records(
            [dict(metric="tpot_ms", stat="mean", value=math.nan, unit="ms",
                  higher_is_better=False, status=status, note=why[:1000],
                  **self.point_fields(mode, w, c, r))], **self.common(v))

    def point_failed(self, v: Variant, w: Workload, c: int, r: float, why: str) -> None:
        """A NaN ``failed`` record for one point (no unit marker: resume measures it again)."""
        self.frames.append(self.nan_point(v, "server", w, c, r, "failed", why))

    def restart(self, v: Variant, server: eng.VLLMServer, key: str) -> bool:
        """Stop what is left of a dead server's process group and start it again."""
        self.run.log(f"latency: vLLM server for {v.name} died at {key} "
                     f"({server.exit_description()}); restarting it once for the other points")
        try:
            server.stop()
            server.start()
        except EngineError as exc:
            self.run.log(f"latency: restart of {v.name} failed: {str(exc).splitlines()[0]}")
            return False
        self.run.log(f"latency: {v.name} server up again in {server.startup_s:.1f} s")
        return True

    def pending(self, v: Variant) -> list[tuple[Workload, int, float]]:
        """Server-mode points of ``v`` not measured yet (no unit marker)."""
        return [(w, c, r) for w, c, r in self.points("server")
                if not self.run.unit_done(STAGE, point_key(v.name, "server", w.name, c, r))]

    def server_point(self, v: Variant, server: eng.VLLMServer, tokenizer: Path, vdir: Path,
                     key: str, w: Workload, c: int, r: float, vocab: int) -> None:
        name = point_stem(w.name, c, r)
        result = vdir / f"{name}.json"
        if result.exists():
            # Left by an interrupted attempt whose unit was never marked done.
            self.run.log(f"latency: replacing unfinished result {result}")
            result.unlink()
        n = self.lat.prompts_for(c)
        warm_up(server.base_url, v.name, w, self.lat.warmups, concurrency=c, vocab_size=vocab,
                seed=self.lat.seed + 1)
        before = eng.scrape_metrics(server.base_url) if self.lat.scrape_metrics else None
        cmd = bench_command(
            base_url=server.base_url, served_model_name=v.name, tokenizer=tokenizer,
            workload=w, concurrency=c, request_rate=r, num_prompts=n, seed=self.lat.seed,
            result_dir=vdir, result_filename=result.name,
            trust_remote_code=self.cfg.model.trust_remote_code)
        t0 = time.monotonic()
        run_bench(cmd, log_path=vdir / f"{name}.bench.log",
                  timeout_s=max(300.0, 60.0 * n * w.output_len / 16))
        wall = time.monotonic() - t0
        if not server.alive():
            # The client records refused connections as failed requests and returns: a
            # point measured against a dead server is a failed point, not data.
            raise EngineError(f"vLLM server died during this point "
                              f"({server.exit_description()})")
        after = eng.scrape_metrics(server.base_url) if self.lat.scrape_metrics else None
        detail = read_json(result)
        m = per_request_metrics(detail)
        fields = self.point_fields("server", w, c, r)
        rows = point_rows(m, **fields)
        summary: dict[str, Any] = {
            "key": key, "bench_command": ["vllm", "bench", "serve", *cmd], "bench_wall_s": wall,
            "bench": bench_summary(detail),
            "evalkit": {f"{x['stat']}_{x['metric']}": x["value"] for x in rows},
        }
        if before is not None and after is not None:
            delta = eng.metrics_delta(before, after)
            srows = server_metric_rows(delta, **{**fields, "mode": "server-metrics"})
            for x in srows:
                x["backend"] = "vllm-server"
            rows += srows
            summary["server_metrics"] = delta
        atomic_write_json(vdir / f"{name}.summary.json", summary)
        df = rec.make_records(rows, **self.common(v))
        self.save_unit(v, key, df, "ok")
        self.run.log(
            f"latency: {key}: {m['completed']} ok, {m['failed']} failed; "
            f"TTFT p50 {_stat(rows, 'ttft_ms', 'p50'):.1f} ms, TPOT p50 "
            f"{_stat(rows, 'tpot_ms', 'p50'):.2f} ms ({wall:.1f} s)")

    def write_provenance(self, v: Variant, log_path: Path, server: eng.VLLMServer
                         ) -> dict[str, Any]:
        prov: dict[str, Any] = eng.provenance(server.log_text())
        env = environment_info()
        info = {
            "variant": v.name, "scheme": v.scheme, "method": v.method,
            "engine": self.cfg.engine.model_dump(mode="json"),
            "device": self.hardware, "server_command": server.command(server.port or 0),
            "startup_s": server.startup_s, "log": str(log_path.relative_to(self.run.path)),
            "engine_log": prov,
            "packages": env.get("packages"), "python": env.get("python"),
            "platform": env.get("platform"),
        }
        atomic_write_json(self.raw / v.name / "provenance.json", info)
        return prov

    # ---- offline mode
    def offline(self, v: Variant, ckpt: Path, bar: Any) -> None:
        todo = self.todo(v, "offline", bar)
        if not todo:
            return
        vdir = self.raw / v.name
        tokenizer = self.tokenizer_for(ckpt)
        out = vdir / "offline.json"
        self.run.log(f"latency: offline engine for {v.name}: {len(todo)} batch points")
        t0 = time.monotonic()
        try:
            rows = eng.run_offline(
                ckpt, engine=self.cfg.engine, out_path=out,
                points=[dict(batch_size=c, input_len=w.input_len, output_len=w.output_len)
                        for w, c, _ in todo],
                log_path=self.run.sub("logs", f"vllm-offline-{v.name}.log"),
                iters=self.lat.offline_iters, warmups=1 if self.lat.warmups else 0,
                seed=self.lat.seed,
                load_format=getattr(self.model, "load_format", None),
                tokenizer=None if tokenizer == ckpt else tokenizer,
                trust_remote_code=self.cfg.model.trust_remote_code)
        except UnsupportedSchemeError as exc:
            self.unsupported.append(f"{v.name} (offline): {exc.reason}")
            self.status_rows(v, "offline", "unsupported", exc.reason)
            bar.update(len(todo))
            return
        except EngineError as exc:
            first = str(exc).splitlines()[0]
            self.failures.append(f"{v.name} (offline): {first}")
            self.status_rows(v, "offline", "failed", str(exc))
            bar.update(len(todo))
            return
        self.run.log(f"latency: offline {v.name} done in {time.monotonic() - t0:.0f} s")
        for w, c, r in todo:
            key = point_key(v.name, "offline", w.name, c, r)
            its = [x for x in rows if x["batch_size"] == c and x["input_len"] == w.input_len
                   and x["output_len"] == w.output_len]
            df = rec.make_records(offline_rows(its, **self.point_fields("offline", w, c, r)),
                                  **self.common(v))
            self.save_unit(v, key, df, "ok")
            bar.update(1)


def _stat(rows: Iterable[Mapping[str, Any]], metric: str, stat: str) -> float:
    return next((float(r["value"]) for r in rows if r["metric"] == metric and r["stat"] == stat
                 and r.get("mode") != "server-metrics"), math.nan)


def _vocab_size(ckpt: Path) -> int:
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 10000
    return int(_text_config(cfg).get("vocab_size") or 10000)


def measure_with_server(cfg: StudyConfig, run: Run, variant: Variant, server: eng.VLLMServer,
                        ckpt: Path, log_path: Path, *, beside: Sequence[str] = ()) -> None:
    """Measure ``variant``'s pending server-mode points on a server another stage started.

    The accuracy stage calls this before stopping a variant's server, so a variant costs
    one engine start for both stages; the latency stage then finds these points done
    (unit markers) and reuses their records. ``beside``: variants whose servers are up,
    idle, on the same device meanwhile (``engine.parallel_starts``); the records say so.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    if cfg.latency is None or "server" not in cfg.latency.modes:
        return
    st = _Stage(cfg, run, {variant.name: ckpt}, None)
    todo = st.pending(variant)
    if not todo:
        return
    run.log(f"latency: measuring {variant.name} on the accuracy stage's server "
            f"({len(todo)} points)")
    with tqdm(total=len(todo), desc=f"latency {variant.name}", unit="point") as bar:
        st.measure(variant, server, ckpt, log_path, todo, bar, beside=beside)


def run_stage(cfg: StudyConfig, run: Run, *, checkpoints: Mapping[str, Path] | None = None,
              resolved: Any | None = None, raise_on_failure: bool = True) -> pd.DataFrame:
    """Measure every variant's latency as ``cfg.latency`` describes; write the records.

    Args:
        cfg: the study.
        run: the run directory (resumable: finished points are reused, not re-measured).
        checkpoints: variant name -> checkpoint directory; default: the quantize stage's.
        resolved: the resolved model (name, path, load_format); default
            ``evalkit.assets.resolve_model(cfg.model)``.

    Returns:
        The stage's records (also written to ``records/latency.parquet``).

    Raises:
        StageError: an engine or benchmark failed (after all other variants were measured
            and the records written), or a variant is unsupported and
            ``latency.unsupported`` is ``error``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    st = _Stage(cfg, run, checkpoints, resolved)
    lat: LatencySpec = st.lat
    modes = [m for m in ("server", "offline") if m in lat.modes]
    total = sum(len(st.points(m)) for m in modes) * len(cfg.variants)
    run.log(f"latency: {len(cfg.variants)} variants x {total // max(1, len(cfg.variants))} "
            f"points on {st.hardware}")
    t0 = time.monotonic()
    k = cfg.engine.parallel_starts if "server" in modes else 1
    with tqdm(total=total, desc="latency", unit="point") as bar:
        for i in range(0, len(cfg.variants), k):
            group: list[tuple[Variant, Path]] = []
            for v in cfg.variants[i:i + k]:
                bar.set_postfix_str(v.name)
                try:
                    group.append((v, st.checkpoint(v)))
                except EvalkitError as exc:  # quantization failed, checkpoint gone: record, go on
                    run.log(f"latency: {v.name} FAILED, no checkpoint: {exc}")
                    st.failures.append(f"{v.name}: {exc}")
                    for mode in modes:
                        st.status_rows(v, mode, "failed", str(exc))
                    bar.update(sum(len(st.points(m)) for m in modes))
            if "server" in modes:
                st.servers(group, bar)
            for v, ckpt in group:
                if "offline" in modes:
                    st.offline(v, ckpt, bar)
                st.roofline_rows(v, ckpt)
    df = rec.combine(st.frames) if st.frames else rec.empty_records()
    run.write_stage_records(STAGE, df)
    run.log(f"latency: {len(df)} records in {time.monotonic() - t0:.0f} s")
    problems = list(st.failures) if raise_on_failure else []
    if st.unsupported and lat.unsupported == "error":
        problems += [f"unsupported: {u}" for u in st.unsupported]
    if problems:
        raise StageError("latency stage: " + " | ".join(problems))
    return df



def rebuild_records(run: Run) -> pd.DataFrame:
    """Recompute the server-mode point records of a run from its raw per-request files.

    Every measured point keeps vLLM's per-request data (``raw/latency/<variant>/<point>.json``)
    and the server's /metrics delta (``<point>.summary.json``); this derives the records
    again with the current definitions -- e.g. after a fix in :func:`per_request_metrics` --
    without re-measuring. Identity columns (run, variant, hardware, ...) are kept from the
    existing records; ``tpot_pct_of_roofline`` is recomputed from the roofline bound stated
    in its note. An interrupted stage has no stage records yet: its finished points (unit
    files) are the starting point. Writes the unit files and the stage records; returns the
    stage records.
    """
    stage_file = run.stage_records_path(STAGE)
    units = sorted(run.path.glob(f"raw/{STAGE}/*/units/*.parquet"))
    unit_records = [rec.read_records(u) for u in units]
    if stage_file.is_file():
        old = rec.read_records(stage_file)
    elif units:
        old = rec.combine(unit_records)
    else:
        raise StageError(f"{run.path}: no latency records to rebuild")
    ident = ["run_id", "study", "model", "variant", "scheme", "method", "stage", "backend",
             "hardware"]
    frames = [old]
    for unit, prev in zip(units, unit_records, strict=True):
        srv = prev[(prev["mode"] == "server") & (prev["status"] == "ok")]
        if srv.empty:
            continue
        first = srv.iloc[0]
        name = point_stem(first["workload"], first["concurrency"], first["request_rate"])
        vdir = unit.parent.parent
        fields = {k: first[k] for k in ("mode", "workload", "concurrency", "request_rate",
                                         "input_len", "output_len")}
        rows = point_rows(per_request_metrics(read_json(vdir / f"{name}.json")), **fields)
        summary_file = vdir / f"{name}.summary.json"
        summary = read_json(summary_file) if summary_file.is_file() else {}
        if summary.get("server_metrics"):
            srows = server_metric_rows(summary["server_metrics"],
                                       **{**fields, "mode": "server-metrics"})
            for x in srows:
                x["backend"] = "vllm-server"
            rows += srows
        common = {k: first[k] for k in ident if k != "backend"}
        new = rec.make_records(rows, **{"backend": first["backend"], **common})
        rec.write_records(new, unit)
        frames.append(new)
    df = rec.combine(frames)
    # roofline rows again, for the hardware the points were measured on
    cfg = run.config()
    hw = str(df["hardware"].dropna().iloc[0]) if df["hardware"].notna().any() else ""
    st = _Stage(cfg, run, None, None)
    st.hardware = hw
    gbps = gpu_bandwidth_gbps(hw)
    st.bandwidth = (gbps, f"vendor peak for {hw}") if gbps else (None, f"{hw}: bandwidth unknown")
    st.frames = [df[~df["metric"].isin(["roofline_tpot_ms", "tpot_pct_of_roofline"])]]
    for v in cfg.variants:
        try:
            ckpt = st.checkpoint(v)
        except EvalkitError:  # e.g. built on another host, not in this cache
            ckpt = None
        if ckpt is None or not (ckpt / "config.json").is_file():
            # checkpoints built on another host: the architecture's config is all the
            # estimate needs (weight bytes come from the quantize records when present)
            ckpt = Path(st.model.path)
        st.roofline_rows(v, ckpt)
    df = rec.combine(st.frames)
    run.write_stage_records(STAGE, df)
    run.log(f"latency: rebuilt {len(frames) - 1} point(s) from raw per-request data")
    return df
