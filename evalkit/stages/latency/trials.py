"""One server-mode point on a running server: warm-up, ``trials`` runs of vLLM's benchmark
client (each with prompts of its own, a mix's prompts written for vLLM's custom dataset),
the board energy and the ``/metrics`` delta around them, the server log checked for kernel
JIT compilations, then the point's records derived from the raw files
(:func:`evalkit.stages.latency.derive.server_point_records`) and guarded."""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from evalkit import engine as eng
from evalkit.assets import mixes
from evalkit.core import records as rec
from evalkit.core.errors import EngineError
from evalkit.core.io import atomic_write_json, read_json
from evalkit.core.traffic import effective_load
from evalkit.metrics import validity as val
from evalkit.metrics.latency import bench_summary
from evalkit.stages.latency.client import (
    bench_command,
    prompt_seed,
    run_bench,
    vllm_range_ratio,
    warm_up,
)
from evalkit.stages.latency.derive import PointData, server_point_records
from evalkit.stages.latency.points import Point
from evalkit.stages.latency.raw import trial_files
from evalkit.stages.latency.rows import stat_of
from evalkit.stages.latency.sweep import LatencyStage
from evalkit.stages.serving import VariantSession


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _healthy(base_url: str) -> bool:
    """Whether the server answers ``/health`` with 200 (vLLM's engine-alive check)."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _warmups(st: LatencyStage, p: Point, n: int) -> int:
    lat_spec = st.lat
    if not lat_spec.warmups:
        return 0
    if p.is_rate:
        # arrivals at a rate meet every batch size up to what the rate builds: a warm-up
        # wave of a quarter of a trial (at most 32) covers the small and middle shapes
        return max(lat_spec.warmups, min(n // 4, 32))
    # At least one full wave at the point's concurrency: with fewer, the first timed trial
    # meets batch shapes the engine has not run yet (on the 8B claim run, trial 1 at
    # chat x 64 was 16-19% slower than trials 2-3 after two warm-up requests).
    return max(lat_spec.warmups, p.concurrency)


def measure_point(st: LatencyStage, session: VariantSession, tokenizer: Path, vdir: Path,
                  point: Point, vocab: int) -> PointData:
    """One server point: warm-up, trials of vLLM's client, records from the raw files.

    The warm-up and every trial send prompts of their own (:func:`prompt_seed`; a mix's
    prompts also start with a line naming the point and trial, so no two share a cached
    block); the ``/metrics`` scrape and the energy counter bracket the trials only, so the
    cache hit rate and joules cover exactly the timed requests.
    """
    variant, lat_spec = session.variant, st.lat
    key = point.key(variant.name)
    workload, concurrency, request_rate = point.workload, point.concurrency, point.request_rate
    name = point.stem()
    for old in trial_files(vdir, name):
        # Left by an interrupted attempt whose unit was never marked done.
        st.run.log(f"latency: replacing unfinished result {old}")
        old.unlink()
    trials = st.trials_for(point)
    n_requests = st.requests_for(point, trials)
    warm_up(session.base_url, variant.name, workload, _warmups(st, point, n_requests),
            concurrency=concurrency, vocab_size=vocab,
            seed=prompt_seed(lat_spec.seed, workload.name, concurrency, request_rate, 0, "warmup"),
            timeout_s=lat_spec.request_timeout_for(workload))
    needs_file = vllm_range_ratio(workload) is None
    meter = st.energy_meter()
    log_from = _log_size(session.log_path)
    before = eng.scrape_metrics(session.base_url) if lat_spec.scrape_metrics else None
    details, commands, summaries, energy = [], [], [], []
    prompts: dict[str, Any] = {}
    t0 = time.monotonic()
    per_request = lat_spec.request_timeout_for(workload)
    waves = -(-n_requests // concurrency)
    limit = 60.0 + per_request * waves + (n_requests / request_rate if point.is_rate else 0.0)
    for trial in range(trials):
        result = vdir / f"{name}_t{trial}.json"
        seed = prompt_seed(lat_spec.seed, workload.name, concurrency, request_rate, trial)
        dataset = None
        if needs_file:
            reqs = mixes.build_requests(workload, n_requests, seed=seed,
                                        tokenizer=st.hf_tokenizer(tokenizer), nonce=f"{name}-t{trial}")
            dataset = mixes.write_jsonl(reqs, vdir / f"{name}_t{trial}.prompts.jsonl")
            prompts[dataset.name] = {"sha256": hashlib.sha256(dataset.read_bytes()).hexdigest(),
                                     "requests": len(reqs), **mixes.describe(reqs)}
        cmd = bench_command(
            base_url=session.base_url, served_model_name=variant.name, tokenizer=tokenizer,
            workload=workload, concurrency=concurrency, request_rate=request_rate,
            num_prompts=n_requests, seed=seed,
            result_dir=vdir, result_filename=result.name,
            trust_remote_code=st.cfg.model.trust_remote_code, dataset_path=dataset,
            burstiness=point.burstiness)
        meter.start()
        run_bench(cmd, log_path=vdir / f"{name}.bench.log", timeout_s=limit,
                  hint=f" ({waves} waves x latency.request_timeout_s {per_request:.0f} s "
                       "+ 60; raise it, or leave this scheme out on this hardware)")
        reading = meter.stop()
        energy.append({"joules": reading.joules, "seconds": reading.seconds,
                       "note": reading.note})
        if not session.alive():
            # The client records refused connections as failed requests and returns: a
            # point measured against a dead server is a failed point, not data.
            raise EngineError(f"vLLM server died during this point "
                              f"({session.exit_description()})")
        detail = read_json(result)
        if any(detail.get("errors") or []) and not _healthy(session.base_url):
            # The engine core died while its API server still answered (every request a 500):
            # these failures say the server is gone, not how the scheme serves.
            raise EngineError("vLLM server stopped answering /health during this point "
                              f"({sum(map(bool, detail['errors']))} request(s) failed)")
        details.append(detail)
        commands.append(["vllm", "bench", "serve", *cmd])
        summaries.append(bench_summary(detail))
    wall = time.monotonic() - t0
    after = eng.scrape_metrics(session.base_url) if lat_spec.scrape_metrics else None
    time.sleep(0.2)  # the server's last log lines of the window reach its file
    jit = eng.jit_events(_log_since(session.log_path, log_from))
    summary: dict[str, Any] = {
        "key": key.encode(), "trials": trials, "requests_per_trial": n_requests,
        "bench_commands": commands, "bench_wall_s": wall, "bench": summaries,
        "energy": energy, "jit_events": jit,
    }
    if prompts:
        summary["prompts"] = prompts
    if point.is_rate and lat_spec.traffic is not None:
        traffic = lat_spec.traffic
        summary.update(offered_rate=request_rate, burstiness=point.burstiness,
                       slo=st.cfg.report.slo.limits(),
                       window={"warmup_pct": traffic.warmup_pct,
                               "cooldown_pct": traffic.cooldown_pct, "by": traffic.window_by})
    delta = None
    if before is not None and after is not None:
        delta = eng.metrics_delta(before, after)
        summary["server_metrics"] = delta
    fields = point.fields()
    fields["load"] = effective_load(point.load, concurrency, request_rate, n_requests)
    summary["load"] = fields["load"]
    data = server_point_records(details, fields, summary=summary, seed=lat_spec.seed)
    summary["evalkit"] = {f"{row['stat']}_{row['metric']}": row["value"] for row in data.rows
                          if row.get("mode") != "server-metrics"}
    summary["saturated"], summary["saturation_reason"] = data.saturated, data.reason
    df = st.guard(variant, rec.make_records(data.rows, **st.common(variant)),
                  server_delta=delta, jit=jit,
                  floor_input_len=data.min_prompt_len if workload.lengths_vary else None)
    atomic_write_json(vdir / f"{name}.summary.json", summary)
    st.save_unit(variant, key, df, "ok")
    rows = data.rows
    hit = stat_of(df.to_dict("records"), "prefix_cache_hit_rate", "value")
    bad = val.invalid_summary(df)
    rate = f" at {request_rate:g} req/s ({point.load})" if point.is_rate else ""
    st.run.log(
        f"latency: {key.encode()}{rate}: {data.completed} ok, {data.failed} failed ({trials} "
        f"trial(s)); TTFT p50 {stat_of(rows, 'ttft_ms', 'p50'):.1f} ms, p90 "
        f"{stat_of(rows, 'ttft_ms', 'p90'):.1f} ms, TPOT p50 "
        f"{stat_of(rows, 'tpot_ms', 'p50'):.2f} ms, prefix-cache hits {hit:.1%} ({wall:.1f} s)"
        + (f"; SATURATED: {data.reason}" if data.saturated else "")
        + (f"; INVALID: {bad['reason'].iloc[0]}" if len(bad) else ""))
    return data
