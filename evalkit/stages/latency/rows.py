"""Records of the latency stage that are built, not measured: a point that could not be
measured, the engine start, the roofline of a variant, the physical floors and validity
marks of a point (:mod:`evalkit.metrics.validity`), and small readers used on the way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.core import records as rec
from evalkit.core.config import StudyConfig
from evalkit.core.specs import Variant
from evalkit.metrics import validity as val
from evalkit.metrics.roofline import (
    decode_bytes_per_step,
    decoder_config,
    estimate_weight_bytes,
    kv_bytes_per_token,
    roofline_tpot_ms,
    text_config,
    weight_read_fraction,
)
from evalkit.stages.latency.points import Point

Bandwidth = tuple[float | None, str]

#: what the engine log says about a server, in its startup record's note, in this order
_STARTUP_NOTE_KEYS = ("linear_kernels", "moe_kernels", "attention_backend", "quantization", "cuda_graphs",
                      "compile", "kv_cache_tokens", "tensor_parallel_size",
                      "pipeline_parallel_size", "executor", "vllm_version", "platform")


def nan_point(common: Mapping[str, Any], point: Point, status: str, why: str) -> pd.DataFrame:
    """The record of a point that could not be measured: NaN ``tpot_ms`` mean, the reason."""
    return rec.make_records(
        [dict(metric="tpot_ms", stat="mean", value=math.nan, unit="ms",
              higher_is_better=False, status=status, note=why[:1000], **point.fields())],
        **common)


def engine_note(prov: Mapping[str, Any]) -> str:
    """What an engine's log says about it (:func:`evalkit.engine.provenance`: kernels, CUDA
    graphs, compile, KV cache, versions) as one note, ``key=value; ...``."""
    return "; ".join(f"{k}={prov[k]}" for k in _STARTUP_NOTE_KEYS if prov.get(k))


def startup_records(startup_s: float | None, prov: Mapping[str, Any], beside: Sequence[str],
                    common: Mapping[str, Any]) -> pd.DataFrame:
    """The ``engine_startup_s`` record of a server, with what its log says (and the variants
    whose servers were up beside it)."""
    return rec.make_records([dict(
        metric="engine_startup_s", stat="value", value=startup_s, unit="s",
        higher_is_better=False, mode="server",
        note=engine_note(prov)
             + (f"; started side by side with {', '.join(beside)} (idle while this one "
                "was measured)" if beside else ""))],
        **common)


def roofline_inputs(v: Variant, ckpt: Path | None, quant_weight_bytes: Mapping[str, float]
                    ) -> tuple[float, float, Mapping[str, Any] | None]:
    """(weight bytes, kv bytes per token, HF config) for a variant; NaN where unknown."""
    cfg_file = (ckpt / "config.json") if ckpt else None
    config = None
    if cfg_file and cfg_file.is_file():
        config = decoder_config(json.loads(cfg_file.read_text(encoding="utf-8")))
    wb = quant_weight_bytes.get(v.name)
    if wb is None and config is not None:
        wb = float(estimate_weight_bytes(config, v.scheme))
    kvb = float(kv_bytes_per_token(config)) if config is not None else math.nan
    return (wb if wb is not None else math.nan), kvb, config


def roofline_records(cfg: StudyConfig, v: Variant, ckpt: Path | None, *, bandwidth: Bandwidth,
                     quant_weight_bytes: Mapping[str, float], frames: Sequence[pd.DataFrame],
                     common: Mapping[str, Any]) -> pd.DataFrame:
    """``roofline_tpot_ms`` of ``v`` and, per measured point among ``frames``, its mean TPOT
    as a percentage of the roofline."""
    gbps, source = bandwidth
    tp = cfg.engine.tensor_parallel_size
    if gbps and tp > 1:
        # each GPU streams its own shard of the weights and KV cache; pipeline stages do not
        # count: a token passes them one after another, each reading its own layers
        gbps, source = gbps * tp, f"{source}, x{tp} GPUs (tensor parallel)"
    wb, kvb, config = roofline_inputs(v, ckpt, quant_weight_bytes)
    src = "quantize records" if v.name in quant_weight_bytes else "estimated from config"
    read1 = weight_read_fraction(config, v.scheme, 1)
    moe = read1 < 1.0
    roof = roofline_tpot_ms(wb * read1, gbps)
    rows = [dict(metric="roofline_tpot_ms", stat="value", value=roof, unit="ms",
                 higher_is_better=False,
                 note=f"weights only, batch 1; weight bytes {wb:.0f} ({src})"
                      + ("; MoE: only the experts a token is routed to are read" if moe else "")
                      + f"; bandwidth {gbps if gbps else float('nan'):.0f} GB/s ({source})")]
    lat = pd.concat(frames, ignore_index=True) if frames else rec.empty_records()
    sel = lat[(lat["variant"] == v.name) & (lat["metric"] == "tpot_ms")
              & (lat["stat"] == "mean") & (lat["status"] == "ok")
              & (lat["mode"].isin(["server", "offline"]))]
    for r in sel.itertuples():
        ctx = float(r.input_len) + float(r.output_len) / 2
        batch, how = int(r.concurrency), ""
        if not math.isinf(float(r.request_rate)):
            # requests arriving at a rate: on average arrival rate x mean E2E are in flight
            # (Little's law), up to the client's cap, not the cap itself
            batch, how = in_flight(lat, r)
        read = wb * weight_read_fraction(config, v.scheme, batch)
        # sliding-window layers hold at most their window: the per-token average at ctx
        kv_ctx = kv_bytes_per_token(config, context_tokens=ctx) if config is not None else kvb
        step = decode_bytes_per_step(read, kv_bytes_token=kv_ctx, context_tokens=ctx,
                                     batch=batch)
        bound = roofline_tpot_ms(step, gbps)
        pct = bound / r.value * 100 if r.value and not math.isnan(r.value) else math.nan
        rows.append(dict(metric="tpot_pct_of_roofline", stat="mean", value=pct, unit="%",
                         higher_is_better=True, mode=r.mode, workload=r.workload,
                         concurrency=r.concurrency, request_rate=r.request_rate,
                         input_len=r.input_len, output_len=r.output_len,
                         note=f"roofline {bound:.4g} ms (weights + KV of {batch}"
                              f" sequences{how} at {ctx:g} tokens) / mean TPOT"))
    return rec.make_records(rows, **common)


def in_flight(points: pd.DataFrame, r: Any) -> tuple[int, str]:
    """Mean requests in flight at rate point ``r`` (a row of ``points``): its window's arrival
    rate x mean E2E latency (Little's law), rounded, within [1, its client cap]; the cap when
    either is missing. Also the words that say so."""
    cap = int(r.concurrency)
    same = points[(points["variant"] == r.variant) & (points["mode"] == r.mode)
                  & (points["workload"] == r.workload) & (points["concurrency"] == r.concurrency)
                  & (points["request_rate"] == r.request_rate)]

    def value(metric: str, stat: str) -> float:
        x = same.loc[(same["metric"] == metric) & (same["stat"] == stat), "value"]
        return float(x.iloc[0]) if len(x) else math.nan

    mean = value("arrival_rate_req_s", "value") * value("e2el_ms", "mean") / 1e3
    if not math.isfinite(mean):
        return cap, " (the client's cap)"
    return max(1, min(cap, round(mean))), " (mean in flight: arrival rate x mean E2E)"


def floor_model(cfg: StudyConfig, v: Variant, ckpt: Path | None, *, hardware: str,
                bandwidth: Bandwidth, quant_weight_bytes: Mapping[str, float]
                ) -> val.FloorModel:
    """The physical floors of ``v``'s points on this device."""
    gbps, _ = bandwidth
    wb, _, config = roofline_inputs(v, ckpt, quant_weight_bytes)
    return val.FloorModel(config=config, scheme=v.scheme, hardware=hardware,
                          gpus=cfg.engine.gpus_per_engine, weight_bytes=wb,
                          bandwidth_gbps=gbps,
                          bandwidth_is_peak=cfg.engine.device == "cuda" and bool(gbps))


def guard_records(df: pd.DataFrame, floors: val.FloorModel, *, prefix_caching: bool,
                  server_delta: Mapping[str, Any] | None = None,
                  offline_iters: Sequence[Mapping[str, Any]] | None = None,
                  jit: Sequence[str] = (), floor_input_len: int | None = None,
                  kv_cache_tokens: int | None = None) -> pd.DataFrame:
    """A point's records with the validity rows and marks of :func:`validity.guard_point`
    (cache hit rate from the ``/metrics`` delta, or offline from vLLM's per-request counts;
    an offline batch against the KV cache its engine logged)."""
    if offline_iters is not None:
        hit, tokens, source = val.offline_cache_hit_rate(offline_iters)
    elif server_delta is not None:
        hit, tokens, source = val.server_cache_hit_rate(server_delta)
    else:
        hit, tokens, source = math.nan, None, "latency.scrape_metrics is off"
    return val.guard_point(df, floors=floors, hit_rate=hit, prompt_tokens=tokens,
                           hit_source=source, prefix_caching=prefix_caching, jit=jit,
                           floor_input_len=floor_input_len, kv_cache_tokens=kv_cache_tokens)


def stat_of(rows: Iterable[Mapping[str, Any]], metric: str, stat: str) -> float:
    """The client-side value of ``metric``/``stat`` among a point's rows (NaN if absent)."""
    return next((float(r["value"]) for r in rows if r["metric"] == metric and r["stat"] == stat
                 and r.get("mode") != "server-metrics"), math.nan)


def vocab_size(ckpt: Path) -> int:
    """The checkpoint's vocabulary size (10000 where its config does not say)."""
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 10000
    return int(text_config(cfg).get("vocab_size") or 10000)
