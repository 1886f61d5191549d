"""What makes a latency point valid, checked on its records.

A latency figure is kept as data only if what it claims to measure happened:

* **No prompt served from cache.** vLLM's automatic prefix caching skips the prefill of
  any block of prompt tokens it has seen; a TTFT measured on such a prompt is a cache read.
  Every point records its prompt-token cache hit rate (``prefix_cache_hit_rate``: cached
  prompt tokens / prompt tokens, from the server's ``/metrics`` counters or, offline, from
  vLLM's per-request ``num_cached_tokens``). Above :data:`MAX_CACHE_HIT_RATE` the point's
  latency rows are ``invalid``; with prefix caching on and no count recorded, too.
* **Nothing below its physical floor.** TTFT at or above the prefill compute floor, TPOT at
  or above the decode memory floor (:mod:`evalkit.metrics.roofline`). A point below either is
  ``invalid`` ("impossible"); ``ttft_pct_of_floor`` / ``tpot_pct_of_floor`` say how close
  every point came (floor / measured x 100: 100 % is the hardware's limit).

Invalid rows stay in the records with the reason in ``note``; reports and claim checks use
``ok`` rows only, and say how many were left out and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from evalkit.core import records as rec
from evalkit.metrics import roofline as rl

#: A point whose prompts were served from the prefix cache above this share is invalid.
MAX_CACHE_HIT_RATE = 0.01

#: Rows of a point that a cache hit invalidates: everything timed. Under concurrency a
#: skipped prefill also frees decode steps, so TPOT and ITL move with TTFT.
TIMED_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "output_throughput_tok_s",
                 "request_throughput_req_s")
POINT_MODES = ("server", "server-metrics", "offline")


def server_cache_hit_rate(delta: Mapping[str, Mapping[str, float]]) -> tuple[float, int | None, str]:
    """(hit rate, prompt tokens, source) of the requests between two ``/metrics`` scrapes.

    Cached prompt tokens / prompt tokens: ``vllm:prompt_tokens_cached_total`` over
    ``vllm:prompt_tokens_total`` where the server exports them, else
    ``vllm:prefix_cache_hits_total`` over ``vllm:prefix_cache_queries_total``. NaN where
    neither pair counted anything.
    """
    def val(name: str) -> float | None:
        v = delta.get(name, {}).get("value")
        return None if v is None or math.isnan(v) else float(v)

    prompt, cached = val("vllm:prompt_tokens_total"), val("vllm:prompt_tokens_cached_total")
    if prompt and cached is not None:
        return cached / prompt, int(prompt), "vllm:prompt_tokens_cached_total / vllm:prompt_tokens_total"
    hits, queries = val("vllm:prefix_cache_hits_total"), val("vllm:prefix_cache_queries_total")
    if queries and hits is not None:
        return hits / queries, int(queries), "vllm:prefix_cache_hits_total / queries_total"
    if prompt and hits is not None:
        return hits / prompt, int(prompt), "vllm:prefix_cache_hits_total / vllm:prompt_tokens_total"
    return math.nan, int(prompt) if prompt else None, "no prefix-cache counters between the scrapes"


def offline_cache_hit_rate(iters: Sequence[Mapping[str, Any]]) -> tuple[float, int | None, str]:
    """(hit rate, prompt tokens, source) over the timed offline calls of a point.

    Rows carry ``cached_tokens`` and ``prompt_tokens`` (sums of vLLM's per-request
    ``num_cached_tokens`` and prompt lengths over both timed calls of an iteration);
    NaN for rows written before these were recorded.
    """
    if not iters or any("cached_tokens" not in r or "prompt_tokens" not in r for r in iters):
        return math.nan, None, "per-request num_cached_tokens not recorded"
    prompt = sum(int(r["prompt_tokens"]) for r in iters)
    cached = sum(int(r["cached_tokens"]) for r in iters)
    return (cached / prompt if prompt else math.nan), prompt, "vLLM RequestOutput.num_cached_tokens"


@dataclass(frozen=True)
class FloorModel:
    """What the physical floors of one variant's points need.

    Attributes:
        config: the model's Hugging Face config (None: no floors).
        scheme: scheme registry name.
        hardware: the device label the points were measured on (GPU name as nvidia-smi
            prints it, possibly with `` xN``).
        gpus: GPUs one engine spans (tensor x pipeline parallel: a floor over all of
            them is lower than the truth, never above it, when stages overlap on
            chunks of a prompt or on different sequences).
        weight_bytes: bytes of the variant's weights (quantize records or estimated).
        bandwidth_gbps: peak memory bandwidth of one GPU (None: unknown).
        bandwidth_is_peak: the bandwidth is a vendor peak. A CPU's copy estimate is a
            lower bound of what the engine draws, so a floor from it could exceed the
            truth: no TPOT floor is checked then.
    """

    config: Mapping[str, Any] | None
    scheme: str
    hardware: str
    gpus: int = 1
    weight_bytes: float = math.nan
    bandwidth_gbps: float | None = None
    bandwidth_is_peak: bool = False

    def ttft_floor_ms(self, input_len: int, sequences: int) -> tuple[float, str]:
        """Least TTFT of ``sequences`` prompts prefilled together (1 for a server request)."""
        if self.config is None:
            return math.nan, "no model config"
        return rl.prefill_floor_ms(self.config, self.scheme, prompt_tokens=input_len,
                                   sequences=sequences, gpu_name=self.hardware, gpus=self.gpus)

    def tpot_floor_ms(self, input_len: int, batch: int) -> tuple[float, str]:
        """Least decode step time with ``batch`` sequences of at least ``input_len`` tokens.

        Weights (for a mixture of experts, the experts ``batch`` tokens are expected to
        route to) plus each sequence's KV cache at its prompt length (a sliding-window layer's
        at most its window), / peak bandwidth x GPUs.
        A server point is checked at batch 1: its running batch changes from step to step,
        and one step with any number of sequences reads at least this much.
        """
        if self.config is None:
            return math.nan, "no model config"
        if not self.bandwidth_is_peak or not self.bandwidth_gbps:
            return math.nan, "no vendor peak bandwidth for this device"
        if not math.isfinite(self.weight_bytes):
            return math.nan, "weight bytes unknown"
        read = self.weight_bytes * rl.weight_read_fraction(self.config, self.scheme, batch)
        kvb = rl.kv_bytes_per_token(self.config, context_tokens=input_len)
        step = rl.decode_bytes_per_step(read, kv_bytes_token=kvb, context_tokens=input_len,
                                        batch=batch)
        gbps = self.bandwidth_gbps * max(self.gpus, 1)
        return rl.roofline_tpot_ms(step, gbps), (
            f"{step / 1e9:.4g} GB per step (weights + KV of {batch} sequence(s) at {input_len} "
            f"tokens) at {gbps:g} GB/s")


def _value(df: pd.DataFrame, metric: str, stat: str, modes: tuple[str, ...]) -> float:
    v = df.loc[(df["metric"] == metric) & (df["stat"] == stat) & df["mode"].isin(modes), "value"]
    return float(v.iloc[0]) if len(v) else math.nan


def _mark(df: pd.DataFrame, mask: pd.Series, reason: str) -> None:
    old = df.loc[mask, "note"].fillna("")
    df.loc[mask, "status"] = "invalid"
    df.loc[mask, "note"] = [f"INVALID: {reason}" + (f"; {o}" if o else "") for o in old]


def batch_waves(config: Mapping[str, Any] | None, batch: int, context_tokens: int,
                kv_cache_tokens: int | None) -> str | None:
    """Why an offline batch did not run as one wave, or None when it fit (or cannot be told).

    vLLM admits a whole batch at once only while its KV cache holds every sequence's
    ``input_len + output_len`` tokens; past that, part of the batch waits or is preempted
    during decode, and the batch's TTFT and TPOT include the wait. ``kv_cache_tokens`` is
    the size the engine logged ("KV cache size: N tokens"). Where a sliding-window layer's
    window is shorter than the context, a sequence holds fewer tokens there than the logged
    size counts in, so the check is left out (None).
    """
    if not kv_cache_tokens or config is None:
        return None
    windows = [w for w in rl.attention_windows(config) if w]
    if windows and context_tokens > min(windows):
        return None
    need = batch * context_tokens
    if need <= kv_cache_tokens:
        return None
    return (f"a batch of {batch} x {context_tokens} tokens ({need:,}) is more than the "
            f"engine's KV cache of {kv_cache_tokens:,} tokens (its log): the batch ran in "
            "waves, its latency includes the wait")


def guard_point(df: pd.DataFrame, *, floors: FloorModel | None, hit_rate: float,
                prompt_tokens: int | None, hit_source: str, prefix_caching: bool,
                jit: Sequence[str] = (), floor_input_len: int | None = None,
                kv_cache_tokens: int | None = None) -> pd.DataFrame:
    """A point's records with its validity rows added and invalid rows marked.

    Args:
        df: records of ONE point (mode server, with its server-metrics rows, or offline).
        floors: the variant's floor model (None: floors not checked).
        hit_rate: prompt-token prefix-cache hit rate of the timed requests (NaN: unknown).
        prompt_tokens: prompt tokens the rate was counted over.
        hit_source: where the rate comes from.
        prefix_caching: whether the engine ran with automatic prefix caching.
        jit: kernel JIT compilations the server logged during the timed window (each makes
            the point invalid: it timed a compilation).
        floor_input_len: prompt length the floors are computed at (default the point's
            ``input_len``); a mix of lengths passes its shortest prompt, so the floor stays a
            lower bound for every request.
        kv_cache_tokens: the KV cache the engine logged, in tokens: an offline batch that
            did not fit it in one wave is invalid (:func:`batch_waves`).

    Returns:
        The records plus ``prefix_cache_hit_rate``, ``ttft_floor_ms``, ``ttft_pct_of_floor``,
        ``tpot_floor_ms`` and ``tpot_pct_of_floor`` rows, with ``status="invalid"`` and the
        reason on every row a failed check touches.
    """
    df = df.copy()
    point = df[df["mode"].isin(("server", "offline"))]
    if point.empty or (point["status"] != "ok").all():
        return df
    first = point.iloc[0]
    mode = str(first["mode"])
    fields = {column: first[column] for column in ("mode", "load", "workload", "concurrency",
                                                   "request_rate", "input_len", "output_len")}
    ident = {column: first[column] for column in ("run_id", "study", "model", "variant",
                                                  "scheme", "method", "stage", "backend",
                                                  "hardware")}
    n_in = int(floor_input_len if floor_input_len is not None else first["input_len"])
    batch = int(first["concurrency"])
    offline = mode == "offline"
    stat = "mean" if offline else "p50"
    ttft = _value(df, "ttft_ms", stat, (mode,))
    tpot = _value(df, "tpot_ms", stat, (mode,))
    ttft_floor, ttft_how = floors.ttft_floor_ms(n_in, batch if offline else 1) if floors else (
        math.nan, "not computed")
    tpot_floor, tpot_how = floors.tpot_floor_ms(n_in, batch if offline else 1) if floors else (
        math.nan, "not computed")
    caching = "on" if prefix_caching else "off"
    rows = [
        dict(metric="prefix_cache_hit_rate", stat="value", value=hit_rate, unit="fraction",
             higher_is_better=False, n=prompt_tokens,
             note=f"cached / prompt tokens of the timed requests ({hit_source}); engine "
                  f"prefix caching {caching}"),
        dict(metric="ttft_floor_ms", stat="value", value=ttft_floor, unit="ms",
             higher_is_better=False, note=f"prefill compute floor: {ttft_how}"),
        dict(metric="ttft_pct_of_floor", stat=stat, value=_pct(ttft_floor, ttft), unit="%",
             higher_is_better=True, note=f"ttft_floor_ms / {stat} TTFT x 100; over 100 is "
                                         "impossible"),
        dict(metric="tpot_floor_ms", stat="value", value=tpot_floor, unit="ms",
             higher_is_better=False, note=f"decode memory floor: {tpot_how}"),
        dict(metric="tpot_pct_of_floor", stat=stat, value=_pct(tpot_floor, tpot), unit="%",
             higher_is_better=True, note=f"tpot_floor_ms / {stat} TPOT x 100; over 100 is "
                                         "impossible"),
    ]
    df = rec.combine([df, rec.make_records(rows, **ident, **fields)])
    in_point = df["mode"].isin(POINT_MODES) & (df["status"] == "ok")
    timed = in_point & df["metric"].isin(TIMED_METRICS)
    if hit_rate > MAX_CACHE_HIT_RATE:
        _mark(df, timed, f"{hit_rate:.1%} of prompt tokens were served from the prefix cache "
                         f"(limit {MAX_CACHE_HIT_RATE:.0%}): TTFT measured a cache read")
    elif math.isnan(hit_rate) and prefix_caching:
        _mark(df, timed, "prefix caching was on and no cache hit count was recorded: the "
                         "prompts may have been served from cache")
    if jit:
        _mark(df, timed, f"kernel JIT compilation during the timed window ({len(jit)} in the "
                         f"server log, first: {jit[0][:160]})")
    waves = batch_waves(floors.config if floors else None, batch,
                        int(first["input_len"]) + int(first["output_len"]),
                        kv_cache_tokens) if offline else None
    if waves:
        _mark(df, timed, waves)
    if ttft < ttft_floor:
        _mark(df, in_point & df["metric"].isin(("ttft_ms", "e2el_ms")),
              f"{stat} TTFT {ttft:.4g} ms is below the prefill floor {ttft_floor:.4g} ms "
              "(impossible)")
    if tpot < tpot_floor:
        _mark(df, in_point & df["metric"].isin(("tpot_ms", "itl_ms")),
              f"{stat} TPOT {tpot:.4g} ms is below the decode floor {tpot_floor:.4g} ms "
              "(impossible)")
    return df


def _pct(floor: float, measured: float) -> float:
    if math.isnan(floor) or math.isnan(measured) or measured <= 0:
        return math.nan
    return floor / measured * 100.0


#: reason text -> the check that failed, for counting.
CHECKS = (("served from the prefix cache", "prefix-cache hits"),
          ("no cache hit count was recorded", "cache state unknown"),
          ("below the prefill floor", "below the prefill floor"),
          ("below the decode floor", "below the decode floor"),
          ("JIT compilation during the timed window", "kernel JIT compilation"))


def invalid_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Invalid latency points: one row per variant x mode x workload x concurrency with the
    failed checks and reason(s), for the report's disclosure."""
    bad = df[(df["stage"] == "latency") & (df["status"] == "invalid")
             & df["mode"].isin(("server", "offline"))]
    cols = ["variant", "mode", "workload", "concurrency", "checks", "metrics", "reason"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in bad.groupby(["variant", "mode", "workload", "concurrency"], sort=False):
        reasons = sorted({part.removeprefix("INVALID: ") for n in g["note"]
                          for part in str(n).split("; ") if part.startswith("INVALID: ")})
        checks = [c for text, c in CHECKS if any(text in r for r in reasons)]
        rows.append(dict(zip(cols[:4], key, strict=True), checks=", ".join(checks),
                         metrics=", ".join(sorted(set(g["metric"]))), reason=" | ".join(reasons)))
    return pd.DataFrame(rows, columns=cols)


def invalid_counts(df: pd.DataFrame) -> dict[str, int]:
    """Invalid points per failed check (a point can fail several)."""
    t = invalid_summary(df)
    return {c: int(t["checks"].str.contains(c, regex=False).sum()) for _, c in CHECKS
            if len(t) and t["checks"].str.contains(c, regex=False).any()}
