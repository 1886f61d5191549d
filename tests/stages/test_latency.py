"""Tests for evalkit.stages.latency: metric definitions, records, roofline, and one real sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.specs import Workload
from evalkit.metrics import latency as LM
from evalkit.metrics import roofline as R
from evalkit.stages.latency.client import bench_command
from evalkit.stages.latency.raw import request_samples, trial_files
from evalkit.stages.latency.rebuild import rebuild_records
from evalkit.stages.latency.stage import raise_for_failures, run_stage

# ---- TPOT / per-request metrics -------------------------------------------------------


def test_tpot_excludes_first_token():
    # 10 tokens: first at 100 ms, last at 1000 ms -> 9 decode gaps of 100 ms
    assert LM.tpot_s(1.0, 0.1, 10) == pytest.approx(0.1)


@pytest.mark.parametrize("n", [0, 1])
def test_tpot_undefined_for_one_token_is_nan(n):
    assert math.isnan(LM.tpot_s(0.5, 0.5, n))


def _detail():
    return {
        "duration": 2.0,
        "errors": ["", "", "", "Bad request: boom"],
        "ttfts": [0.1, 0.2, 0.3, 0.0],
        "latencies": [1.0, 1.1, 0.3, 0.0],
        "output_lens": [10, 10, 1, 0],
        "input_lens": [64, 64, 64, 64],
        "itls": [[0.1] * 9, [0.1] * 9, [], []],
    }


def test_per_request_metrics_counts_failures_and_keeps_nan():
    m = LM.per_request_metrics(_detail())
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["ttft_ms"] == pytest.approx([100, 200, 300])
    assert m["tpot_ms"][:2] == pytest.approx([100, 100])
    assert math.isnan(m["tpot_ms"][2])  # 1-token output: undefined, not 0
    assert len(m["itl_ms"]) == 18
    assert m["output_tokens"] == 21
    assert m["errors"] == ["Bad request: boom"]


def test_point_rows_stats_and_throughput():
    m = LM.per_request_metrics(_detail())
    rows = LM.point_rows(m, mode="server", workload="w", concurrency=2,
                        request_rate=math.inf, input_len=64, output_len=10)
    df = rec.make_records(rows, variant="v", stage="latency")
    get = lambda met, st: float(df[(df.metric == met) & (df.stat == st)].value.iloc[0])  # noqa: E731
    assert get("ttft_ms", "p50") == pytest.approx(200)
    assert get("tpot_ms", "mean") == pytest.approx(100)  # the NaN is excluded, not averaged as 0
    assert int(df[(df.metric == "tpot_ms") & (df.stat == "mean")].n.iloc[0]) == 2
    assert get("failed_requests", "value") == 1
    assert get("output_throughput_tok_s", "value") == pytest.approx(21 / 2.0)
    assert "boom" in df[df.metric == "failed_requests"].note.iloc[0]


def test_all_failed_point_gives_nan_not_zero():
    d = _detail()
    d["errors"] = ["x"] * 4
    rows = LM.point_rows(LM.per_request_metrics(d), mode="server")
    vals = {(r["metric"], r["stat"]): r["value"] for r in rows}
    assert math.isnan(vals[("ttft_ms", "mean")]) and math.isnan(vals[("tpot_ms", "p99")])
    assert math.isnan(vals[("output_throughput_tok_s", "value")])
    assert vals[("failed_requests", "value")] == 4


def test_percentile_rows_empty_is_nan():
    rows = rec.percentile_rows([], metric="ttft_ms", unit="ms", higher_is_better=False)
    assert all(math.isnan(r["value"]) for r in rows) and all(r["n"] == 0 for r in rows)


def test_percentiles_match_numpy_like_vllm():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 10.0, 101)
    rows = rec.percentile_rows(x, metric="ttft_ms", unit="ms", higher_is_better=False)
    assert rows[2]["value"] == pytest.approx(np.percentile(x, 90))


def test_server_metric_rows_from_delta():
    delta = {
        "vllm:time_to_first_token_seconds": {"count": 4, "sum": 0.4, "mean": 0.1,
                                             "p50": 0.08, "p90": 0.15, "p99": 0.2},
        "vllm:request_success_total": {"value": 4.0},
    }
    rows = LM.server_metric_rows(delta, mode="server-metrics")
    ttft = {r["stat"]: r["value"] for r in rows if r["metric"] == "ttft_ms"}
    assert ttft["mean"] == pytest.approx(100) and ttft["p90"] == pytest.approx(150)
    e2e = [r for r in rows if r["metric"] == "e2el_ms"]
    assert all(math.isnan(r["value"]) for r in e2e)  # not exported -> NaN, not 0


def test_offline_rows():
    its = [dict(ttft_s=0.1, e2e_s=1.0, tpot_s=0.1, output_tokens=40),
           dict(ttft_s=0.1, e2e_s=2.0, tpot_s=0.2, output_tokens=40)]
    rows = LM.offline_rows(its, mode="offline")
    v = {(r["metric"], r["stat"]): r["value"] for r in rows}
    assert v[("tpot_ms", "mean")] == pytest.approx(150)
    assert v[("output_throughput_tok_s", "mean")] == pytest.approx((40 + 20) / 2)


# ---- roofline -------------------------------------------------------------------------


def test_startup_record_says_how_the_engine_was_spread():
    from evalkit.stages.latency.rows import startup_records

    prov = eng.provenance(
        "INFO [core.py:77] Initializing a V1 LLM engine (v0.24.0) with config: model='/m', "
        "tensor_parallel_size=4, pipeline_parallel_size=2, data_parallel_size=1\n"
        "INFO [ray_executor.py:117] non_carry_over_env_vars from config: set()\n")
    df = startup_records(61.0, prov, [], dict(variant="base", stage="latency"))
    assert "tensor_parallel_size=4; pipeline_parallel_size=2; executor=ray; " \
           "vllm_version=0.24.0" in df.note.iloc[0]


@pytest.mark.parametrize("name,bw", [
    ("NVIDIA H100 80GB HBM3", 3350), ("NVIDIA H100 PCIe", 2000), ("NVIDIA H100 NVL", 3900),
    ("NVIDIA H200", 4800), ("NVIDIA H200 NVL", 4800), ("Tesla T4", None),
])
def test_gpu_bandwidth(name, bw):
    assert R.gpu_bandwidth_gbps(name) == bw


def test_roofline_math():
    assert R.roofline_tpot_ms(3.35e9, 3350) == pytest.approx(1.0)
    assert math.isnan(R.roofline_tpot_ms(1e9, None))
    assert R.decode_bytes_per_step(100, kv_bytes_token=2, context_tokens=10, batch=3) == 160


LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                tie_word_embeddings=True)


def test_estimate_weight_bytes_orders_schemes():
    b = {s: R.estimate_weight_bytes(LLAMA_1B, s) for s in ("base", "w8a8_int8", "w4a16")}
    # Llama-3.2-1B: 1.24 B params -> ~2.47 GB in bf16
    assert b["base"] == pytest.approx(2.47e9, rel=0.02)
    assert b["w4a16"] < b["w8a8_int8"] < b["base"]
    # int4 linears (+ one bf16 scale per 128 weights); embeddings and norms stay 16-bit
    linear = 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192)
    emb_norms = 128256 * 2048 * 2 + 33 * 2048 * 2
    assert b["w4a16"] == linear // 2 + linear // 128 * 2 + emb_norms
    assert b["base"] == 2 * linear + emb_norms


def _preset_config(name: str) -> dict:
    import json

    from evalkit.assets import models

    root = models.PRESETS_DIR / name / "config.json"
    return json.loads(root.read_text())


def test_moe_weight_bytes_and_read_fraction():
    qwen = _preset_config("qwen3-30b-a3b")
    # Qwen3-30B-A3B: 30.5 B parameters, 3.3 B active per token (model card)
    assert R.estimate_weight_bytes(qwen, "base") == pytest.approx(2 * 30.5e9, rel=0.02)
    f1 = R.weight_read_fraction(qwen, "base", 1)
    assert f1 * 30.5e9 == pytest.approx(3.3e9, rel=0.05)
    # more sequences touch more experts, never more than all of them
    fs = [R.weight_read_fraction(qwen, "w4a16", b) for b in (1, 4, 16, 64, 256)]
    assert fs == sorted(fs) and fs[0] < 0.2 and 0.99 < fs[-1] <= 1.0
    # dense models read every weight at every step
    assert R.weight_read_fraction(LLAMA_1B, "w4a16", 1) == 1.0
    assert R.weight_read_fraction(None, "w4a16", 1) == 1.0


def test_cpu_bandwidth_is_positive():
    assert R.cpu_copy_bandwidth_gbps(mib=16, repeats=2) > 0.1


# ---- the bench client's flags exist in the installed vLLM --------------------------------


def test_bench_command_parses_with_installed_vllm(tmp_path):
    serve = pytest.importorskip("vllm.benchmarks.serve")
    import argparse

    cmd = bench_command(
        base_url="http://127.0.0.1:1", served_model_name="m", tokenizer=tmp_path,
        workload=Workload(name="w", input_len=64, output_len=16), concurrency=2,
        request_rate=math.inf, num_prompts=8, seed=0, result_dir=tmp_path,
        result_filename="x.json")
    assert cmd[:2] == ["--backend", "openai"]
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args(cmd)
    assert args.max_concurrency == 2 and math.isinf(args.request_rate)
    assert args.save_detailed and args.ignore_eos and args.num_warmups == 0
    assert args.percentile_metrics == "ttft,tpot,itl,e2el"


# ---- one real sweep on CPU -------------------------------------------------------------


def _tiny_run(tmp_path, ckpt):
    """An empty run directory and the resolved-model stand-in for the tiny checkpoint."""
    from evalkit.core.run import Run

    run = Run(tmp_path / "t" / "r1")
    for d in ("records", "raw", "units", "logs"):
        (run.path / d).mkdir(parents=True)

    class M:
        name, path, load_format = "tiny", ckpt, None

    return run, M


def _records(cfg, result):
    """The records of a latency stage that must not have failed (it used to raise)."""
    raise_for_failures(cfg, result)
    return result.records


@pytest.mark.slow
def test_real_sweep_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    from evalkit.core.config import StudyConfig

    ckpt = build_tiny_llama()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(ckpt)},
        "variants": [{"name": "base", "scheme": "base"}, {"name": "again", "scheme": "base"}],
        "latency": {"workloads": [{"name": "short", "input_len": 32, "output_len": 8}],
                    "concurrency": [2], "num_prompts": 6, "warmups": 1, "trials": 2},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.1,
                   "max_model_len": 256, "startup_timeout_s": 300, "parallel_starts": 2},
        "output_root": str(tmp_path),
    })
    run, M = _tiny_run(tmp_path, ckpt)

    ckpts = {"base": ckpt, "again": ckpt}
    df = _records(cfg, run_stage(cfg, run, checkpoints=ckpts, resolved=M))
    # both servers started side by side (uni executor: API server + engine core each)
    assert set(df[df.status == "ok"].variant) == {"base", "again"}
    notes = df[df.metric == "engine_startup_s"].set_index("variant").note
    assert "side by side with again" in notes["base"]
    assert "side by side with base" in notes["again"]
    # how the engine was spread, as its own log says
    assert "tensor_parallel_size=1; pipeline_parallel_size=1" in notes["base"]
    prov = json.loads((run.path / "raw/latency/base/provenance.json").read_text())
    assert prov["server_command"][-2:] == ["--distributed-executor-backend", "uni"]
    assert "--no-enable-prefix-caching" in prov["server_command"]
    n = cfg.latency.prompts_for(2)  # max(num_prompts, 4 x concurrency) = 8, 4 per trial
    ok = df[(df["mode"] == "server") & (df["status"] == "ok") & (df.variant == "base")]
    get = lambda met, st: float(ok[(ok.metric == met) & (ok.stat == st)].value.iloc[0])  # noqa: E731
    assert get("completed_requests", "value") == n and get("failed_requests", "value") == 0
    assert 0 < get("ttft_ms", "p50") < get("e2el_ms", "p50")
    assert get("tpot_ms", "mean") > 0
    df = df[df.variant == "base"]
    srv = df[(df["mode"] == "server-metrics") & (df.metric == "completed_requests")]
    assert float(srv.value.iloc[0]) == n  # warm-ups are outside the scrape window
    srv_e2e = float(df[(df["mode"] == "server-metrics") & (df.metric == "e2el_ms")
                       & (df.stat == "mean")].value.iloc[0])
    # the server sees each request from arrival to last token; the client adds HTTP and
    # streaming on top, so the server's mean cannot exceed the client's (timer noise aside)
    assert 0 < srv_e2e <= get("e2el_ms", "mean") * 1.05
    assert (run.path / "raw/latency/base/provenance.json").is_file()
    assert (run.path / "raw/latency/base/short_c2_rinf.summary.json").is_file()
    assert (df.metric == "roofline_tpot_ms").any() and (df.metric == "engine_startup_s").any()
    # two trials, each with prompts of its own; no prompt token came from the cache
    summary = json.loads((run.path / "raw/latency/base/short_c2_rinf.summary.json").read_text())
    assert summary["trials"] == 2 and summary["requests_per_trial"] == 4
    seeds = [c[c.index("--seed") + 1] for c in summary["bench_commands"]]
    assert len(set(seeds)) == 2
    assert [f.name for f in trial_files(run.path / "raw/latency/base", "short_c2_rinf")] == [
        "short_c2_rinf_t0.json", "short_c2_rinf_t1.json"]
    hit = df[df.metric == "prefix_cache_hit_rate"]
    # prompt tokens as the server counted them (the random dataset may add a BOS token)
    assert len(hit) == 1 and float(hit.value.iloc[0]) == 0.0 and n * 32 <= hit.n.iloc[0] <= n * 34
    assert get("ttft_ms", "p50_ci_low") <= get("ttft_ms", "p50") <= get("ttft_ms", "p50_ci_high")
    assert int(ok[(ok.metric == "ttft_ms") & (ok.stat == "trial_spread_pct")].n.iloc[0]) == 2
    # CPU: no vendor peak, so floors are recorded as unknown, never as a pass
    assert math.isnan(float(df[df.metric == "ttft_floor_ms"].value.iloc[0]))
    # the records rebuild from the raw per-request files to the same figures
    import yaml

    run.config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    rebuilt = rebuild_records(run)
    rb = rebuilt[(rebuilt.variant == "base") & (rebuilt["mode"] == "server")]
    for met, st in (("ttft_ms", "p50"), ("tpot_ms", "mean"), ("ttft_ms", "p50_ci_high")):
        assert float(rb[(rb.metric == met) & (rb.stat == st)].value.iloc[0]) == pytest.approx(
            get(met, st))
    samples = request_samples(run.path)
    assert len(samples[(samples.variant == "base") & (samples.metric == "ttft_ms")]) == n

    # resume: every point is done -> no server is started, the same numbers come back
    def no_server(*a, **k):
        raise AssertionError("server started on resume")

    monkeypatch.setattr(eng.VLLMServer, "launch", no_server)
    df2 = _records(cfg, run_stage(cfg, run, checkpoints=ckpts, resolved=M))
    a = df[df.metric == "ttft_ms"].sort_values("stat").value.to_numpy()
    b = df2[(df2.metric == "ttft_ms") & (df2.variant == "base")].sort_values("stat").value.to_numpy()
    np.testing.assert_array_equal(a, b)


def test_tiny_model_weight_estimate_matches_file(tmp_path):
    pytest.importorskip("transformers")
    import json

    from tiny_model import build_tiny_llama

    ckpt = build_tiny_llama()
    config = json.loads((ckpt / "config.json").read_text())
    size = os.path.getsize(ckpt / "model.safetensors")
    assert R.estimate_weight_bytes(config, "base") == pytest.approx(size, rel=0.02)
    assert Path(ckpt).is_dir()


@pytest.mark.slow
def test_guard_catches_real_cache_hits(tmp_path, monkeypatch):
    """With caching on and one prompt set reused across trials (what evalkit never does by
    itself), vLLM's own counters show the hits and the point is marked invalid."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    from evalkit.core.config import StudyConfig

    ckpt = build_tiny_llama()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(ckpt)},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {"workloads": [{"name": "long", "input_len": 512, "output_len": 4}],
                    "concurrency": [1], "num_prompts": 4, "warmups": 0, "trials": 2},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.1, "prefix_caching": True,
                   "max_model_len": 1024, "startup_timeout_s": 300},
        "output_root": str(tmp_path),
    })
    run, M = _tiny_run(tmp_path, ckpt)

    from evalkit.stages.latency import trials

    monkeypatch.setattr(trials, "prompt_seed", lambda *a, **k: 1234)  # trial 2 repeats trial 1
    df = _records(cfg, run_stage(cfg, run, checkpoints={"base": ckpt}, resolved=M))
    hit = float(df[df.metric == "prefix_cache_hit_rate"].value.iloc[0])
    assert hit > 0.3  # the second trial's prompts were all cached (block-aligned part)
    p50 = df[(df.metric == "ttft_ms") & (df.stat == "p50") & (df["mode"] == "server")]
    assert p50.status.iloc[0] == "invalid" and "prefix cache" in p50.note.iloc[0]


@pytest.mark.slow
def test_real_offline_batches_fresh_prompts(tmp_path):
    """Offline mode on a real engine: every generate() call has prompts of its own, vLLM's
    per-request cached-token counts are recorded, and the point is valid."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    from evalkit.core.config import StudyConfig

    ckpt = build_tiny_llama()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(ckpt)},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {"modes": ["offline"], "offline_iters": 2, "warmups": 1,
                    "workloads": [{"name": "long", "input_len": 256, "output_len": 4}],
                    "concurrency": [2]},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.1,
                   "max_model_len": 512, "startup_timeout_s": 300},
        "output_root": str(tmp_path),
    })
    run, M = _tiny_run(tmp_path, ckpt)

    df = _records(cfg, run_stage(cfg, run, checkpoints={"base": ckpt}, resolved=M))
    rows = json.loads((run.path / "raw/latency/base/offline.json").read_text())["rows"]
    assert len(rows) == 2
    # two timed calls an iteration (first token, whole batch), 2 prompts each, >= 256 tokens
    assert all(r["cached_tokens"] == 0 and r["prompt_tokens"] >= 4 * 256 for r in rows)
    hit = df[df.metric == "prefix_cache_hit_rate"]
    assert float(hit.value.iloc[0]) == 0.0 and "num_cached_tokens" in hit.note.iloc[0]
    pts = df[(df["mode"] == "offline") & df.metric.isin(["ttft_ms", "tpot_ms"])]
    assert set(pts.status) == {"ok"}
    samples = request_samples(run.path)
    assert len(samples[samples.metric == "ttft_ms"]) == 2
    prov = json.loads((run.path / "raw/latency/base/offline-provenance.json").read_text())
    assert int(prov["engine_log"]["kv_cache_tokens"].replace(",", "")) >= 2 * 260


@pytest.mark.slow
def test_real_offline_batch_past_its_kv_cache_is_marked_as_waves(tmp_path):
    """A KV cache of ~800 tokens (what kv_cache_memory_gib asks vLLM for) against a batch of
    4 x 260 tokens: the engine logs its cache size, runs the batch in waves, and the point's
    timed rows are marked invalid with that reason (the study file check that refuses such a
    batch beforehand is left out: StudyConfig alone does not run it)."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    from evalkit.core.config import StudyConfig

    ckpt = build_tiny_llama()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(ckpt)},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {"modes": ["offline"], "offline_iters": 1, "warmups": 0,
                    "workloads": [{"name": "long", "input_len": 256, "output_len": 4}],
                    "concurrency": [4]},
        # 2 layers x K,V x 2 heads x 64 x 2 bytes = 1 KiB a token: 800 tokens, less a block
        "engine": {"enforce_eager": True, "kv_cache_memory_gib": 800 / 2**20,
                   "max_model_len": 512, "startup_timeout_s": 300},
        "output_root": str(tmp_path),
    })
    run, M = _tiny_run(tmp_path, ckpt)
    df = _records(cfg, run_stage(cfg, run, checkpoints={"base": ckpt}, resolved=M))
    prov = json.loads((run.path / "raw/latency/base/offline-provenance.json").read_text())
    logged = int(prov["engine_log"]["kv_cache_tokens"].replace(",", ""))
    assert 512 <= logged < 4 * 260
    ttft = df[(df["mode"] == "offline") & (df.metric == "ttft_ms") & (df.stat == "mean")]
    assert ttft.status.iloc[0] == "invalid"
    assert ttft.note.iloc[0].startswith(f"INVALID: a batch of 4 x 260 tokens (1,040) is more "
                                        f"than the engine's KV cache of {logged:,} tokens")


@pytest.mark.slow
def test_real_command_a_in_miniature_runs_offline_with_its_window_mix(tmp_path):
    """The Command A architecture (Cohere2, three sliding-window layers per global one) in
    miniature, random weights, base and W4A16 through vLLM's CPU backend offline, as a preset
    runs on a GPU host: vLLM builds it from the preset's keys, W4A16 gets its int4 kernel,
    both points are valid (no floors on a CPU: tests/metrics/test_roofline_windows.py checks
    them on the full shape), and the KV cache vLLM logs agrees with evalkit's bytes a token
    (layers x KV heads x head dim, which the offline-batch check of evalkit validate uses
    while a context is inside the window and every layer holds it). vLLM counts requests of
    max_model_len tokens, of which a sliding layer may hold its window plus a prefill chunk,
    here all of them and a block more: its count lies at or a few % under evalkit's."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_cohere2

    from evalkit.core.config import StudyConfig

    base = build_tiny_cohere2(tmp_path / "c2")
    w4 = build_tiny_cohere2(tmp_path / "c2-w4a16", w4a16=True)
    config = json.loads((base / "config.json").read_text())
    assert R.attention_windows(config) == [512, 512, 512, None] * 2
    kv_gib = 64 / 1024
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(base)},
        "variants": [{"name": "base", "scheme": "base"}, {"name": "w4a16", "scheme": "w4a16"}],
        "latency": {"modes": ["offline"], "offline_iters": 1, "warmups": 0,
                    "workloads": [{"name": "short", "input_len": 200, "output_len": 8}],
                    "concurrency": [4]},
        "engine": {"enforce_eager": True, "kv_cache_memory_gib": kv_gib, "max_model_len": 2048,
                   "startup_timeout_s": 300},
        "output_root": str(tmp_path),
    })
    run, M = _tiny_run(tmp_path, base)
    M.load_format = "dummy"
    df = _records(cfg, run_stage(cfg, run, checkpoints={"base": base, "w4a16": w4},
                                 resolved=M))
    pts = df[(df["mode"] == "offline") & df.metric.isin(["ttft_ms", "tpot_ms"])]
    assert set(pts.variant) == {"base", "w4a16"} and set(pts.status) == {"ok"}
    all_layers = kv_gib * 2**30 / R.kv_bytes_per_token(config)  # 8 layers x 512 B a token
    assert all_layers == 16384
    for v in ("base", "w4a16"):
        prov = json.loads((run.path / f"raw/latency/{v}/offline-provenance.json").read_text())
        log = prov["engine_log"]
        logged = int(log["kv_cache_tokens"].replace(",", ""))
        assert 0.9 * all_layers <= logged <= all_layers, (v, logged)
    assert "WNA16" in (log["linear_kernels"] or "")
