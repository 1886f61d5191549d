"""One server-mode point on a running server: warm-up, ``trials`` runs of vLLM's benchmark
client, the ``/metrics`` delta around them, pooled and guarded records, the point's summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.errors import EngineError
from evalkit.core.io import atomic_write_json, read_json
from evalkit.metrics import validity as val
from evalkit.metrics.latency import (
    bench_summary,
    interval_rows,
    per_request_metrics,
    point_rows,
    pool_metrics,
    server_metric_rows,
)
from evalkit.metrics.raw import trial_files
from evalkit.stages.latency.client import bench_command, prompt_seed, run_bench, warm_up
from evalkit.stages.latency.points import Point
from evalkit.stages.latency.rows import stat_of
from evalkit.stages.latency.sweep import _Stage
from evalkit.stages.serving import VariantSession


def measure_point(st: _Stage, session: VariantSession, tokenizer: Path, vdir: Path, p: Point,
                  vocab: int) -> None:
    """One server point: warm-up, ``trials`` runs of vLLM's client, pooled records.

    The warm-up and every trial send prompts of their own (:func:`prompt_seed`); the
    ``/metrics`` scrape brackets the trials only, so its counters (the cache hit rate
    among them) cover exactly the timed requests.
    """
    v, lat = session.variant, st.lat
    key = p.key(v.name)
    w, c, r = p.workload, p.concurrency, p.request_rate
    name = p.stem()
    for old in trial_files(vdir, name):
        # Left by an interrupted attempt whose unit was never marked done.
        st.run.log(f"latency: replacing unfinished result {old}")
        old.unlink()
    n = lat.prompts_per_trial(c, st.trials)
    # At least one full wave at the point's concurrency: with fewer, the first timed trial
    # meets batch shapes the engine has not run yet (on the 8B claim run, trial 1 at
    # chat x 64 was 16-19% slower than trials 2-3 after two warm-up requests).
    n_warm = max(lat.warmups, c) if lat.warmups else 0
    warm_up(session.base_url, v.name, w, n_warm, concurrency=c, vocab_size=vocab,
            seed=prompt_seed(lat.seed, w.name, c, r, 0, "warmup"),
            timeout_s=lat.request_timeout_for(w))
    before = eng.scrape_metrics(session.base_url) if lat.scrape_metrics else None
    per_trial, commands, summaries = [], [], []
    t0 = time.monotonic()
    for t in range(st.trials):
        result = vdir / f"{name}_t{t}.json"
        cmd = bench_command(
            base_url=session.base_url, served_model_name=v.name, tokenizer=tokenizer,
            workload=w, concurrency=c, request_rate=r, num_prompts=n,
            seed=prompt_seed(lat.seed, w.name, c, r, t), result_dir=vdir,
            result_filename=result.name, trust_remote_code=st.cfg.model.trust_remote_code)
        per_request = lat.request_timeout_for(w)
        run_bench(cmd, log_path=vdir / f"{name}.bench.log",
                  timeout_s=60.0 + per_request * -(-n // c),
                  hint=f" ({-(-n // c)} waves x latency.request_timeout_s {per_request:.0f} s "
                       "+ 60; raise it, or leave this scheme out on this hardware)")
        if not session.alive():
            # The client records refused connections as failed requests and returns: a
            # point measured against a dead server is a failed point, not data.
            raise EngineError(f"vLLM server died during this point "
                              f"({session.exit_description()})")
        detail = read_json(result)
        per_trial.append(per_request_metrics(detail))
        commands.append(["vllm", "bench", "serve", *cmd])
        summaries.append(bench_summary(detail))
    wall = time.monotonic() - t0
    after = eng.scrape_metrics(session.base_url) if lat.scrape_metrics else None
    m = pool_metrics(per_trial)
    fields = p.fields()
    rows = point_rows(m, **fields) + interval_rows(m, seed=lat.seed, **fields)
    summary: dict[str, Any] = {
        "key": key.encode(), "trials": st.trials, "requests_per_trial": n,
        "bench_commands": commands, "bench_wall_s": wall, "bench": summaries,
        "evalkit": {f"{x['stat']}_{x['metric']}": x["value"] for x in rows},
    }
    delta = None
    if before is not None and after is not None:
        delta = eng.metrics_delta(before, after)
        srows = server_metric_rows(delta, **{**fields, "mode": "server-metrics"})
        for x in srows:
            x["backend"] = "vllm-server"
        rows += srows
        summary["server_metrics"] = delta
    df = st.guard(v, rec.make_records(rows, **st.common(v)), server_delta=delta)
    atomic_write_json(vdir / f"{name}.summary.json", summary)
    st.save_unit(v, key, df, "ok")
    hit = stat_of(df.to_dict("records"), "prefix_cache_hit_rate", "value")
    bad = val.invalid_summary(df)
    st.run.log(
        f"latency: {key.encode()}: {m['completed']} ok, {m['failed']} failed ({st.trials} "
        f"trial(s)); TTFT p50 {stat_of(rows, 'ttft_ms', 'p50'):.1f} ms, TPOT p50 "
        f"{stat_of(rows, 'tpot_ms', 'p50'):.2f} ms, prefix-cache hits {hit:.1%} ({wall:.1f} s)"
        + (f"; INVALID: {bad['reason'].iloc[0]}" if len(bad) else ""))
