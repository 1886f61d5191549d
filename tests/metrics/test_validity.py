"""Tests for the validity guards of latency points: cache hits, physical floors, trials."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from evalkit.core import records as rec
from evalkit.core.specs import EngineSpec
from evalkit.engine.options import engine_cli_args, engine_kwargs
from evalkit.metrics import latency as LM
from evalkit.metrics import roofline as R
from evalkit.metrics import validity as V
from evalkit.stages.latency.client import prompt_seed
from evalkit.stages.latency.raw import trial_files

LLAMA_8B = json.loads((Path(__file__).parents[2] / "evalkit/assets/presets/llama-3.1-8b/config.json")
                      .read_text())
H200 = "NVIDIA H200"


# ---- floors ---------------------------------------------------------------------------


def test_prefill_floor_of_the_8b_offline_batch():
    # 256 x 1024 tokens through ~7.0 B linear weights: 2 x 7.0e9 x 262144 = 3.66 PFLOP,
    # at the H200's 989 dense bf16 TFLOP/s >= 3.7 s (the old run recorded 0.42 s)
    floor, how = R.prefill_floor_ms(LLAMA_8B, "base", prompt_tokens=1024, sequences=256,
                                    gpu_name=H200)
    assert 3650 < floor < 3900, how
    assert R.active_linear_params(LLAMA_8B) == pytest.approx(6.98e9, rel=0.01)
    # FP8 matmuls run at twice the bf16 peak: the floor of the linear part halves
    fp8, _ = R.prefill_floor_ms(LLAMA_8B, "w4a8_fp8", prompt_tokens=1024, sequences=256,
                                gpu_name=H200)
    assert fp8 == pytest.approx(floor / 2, rel=0.05)
    # W4A16 dequantizes to bf16 at the MMA: the bf16 peak
    assert R.matmul_format("w4a16") == "bf16" and R.matmul_format("w8a8_int8") == "int8"
    # tensor parallel: each GPU computes its share
    tp2, _ = R.prefill_floor_ms(LLAMA_8B, "base", prompt_tokens=1024, sequences=256,
                                gpu_name=H200 + " x2", gpus=2)
    assert tp2 == pytest.approx(floor / 2)


def test_no_floor_without_a_known_peak():
    floor, how = R.prefill_floor_ms(LLAMA_8B, "base", prompt_tokens=128, sequences=1,
                                    gpu_name="CPU: Intel Xeon (2 cores)")
    assert math.isnan(floor) and "no bf16 peak" in how
    fm = V.FloorModel(config=LLAMA_8B, scheme="base", hardware="CPU", weight_bytes=16e9,
                      bandwidth_gbps=20.0, bandwidth_is_peak=False)
    assert math.isnan(fm.tpot_floor_ms(128, 1)[0])  # a copy estimate is no peak


def test_moe_prefill_counts_routed_experts_only():
    moe = dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
               num_key_value_heads=4, head_dim=128, vocab_size=151936, num_experts=128,
               num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144)
    active = R.active_linear_params(moe)
    # Qwen3-30B-A3B: ~3.3 B active parameters, ~1.6 B of them routed experts + attention
    assert 2.5e9 < active < 3.5e9


# ---- the guard ------------------------------------------------------------------------


def _point(ttft_p50: float, tpot_p50: float, *, mode: str = "server", concurrency: int = 1):
    fields = dict(mode=mode, workload="chat", concurrency=concurrency, request_rate=math.inf,
                  input_len=1024, output_len=128)
    rows = []
    for metric, v in (("ttft_ms", ttft_p50), ("tpot_ms", tpot_p50), ("e2el_ms", ttft_p50 + 127 * tpot_p50)):
        for stat in ("mean", "p50"):
            rows.append(dict(metric=metric, stat=stat, value=v, unit="ms", higher_is_better=False,
                             **fields))
    rows.append(dict(metric="completed_requests", stat="value", value=64.0, unit="count",
                     higher_is_better=True, **fields))
    return rec.make_records(rows, variant="w4a16", scheme="w4a16", stage="latency",
                            hardware=H200, run_id="r", study="s", model="llama-3.1-8b",
                            method="rtn", backend="vllm")


FLOORS = V.FloorModel(config=LLAMA_8B, scheme="w4a16", hardware=H200,
                      weight_bytes=R.estimate_weight_bytes(LLAMA_8B, "w4a16"),
                      bandwidth_gbps=R.gpu_bandwidth_gbps(H200), bandwidth_is_peak=True)


def _guard(df, *, hit=0.0, caching=False):
    return V.guard_point(df, floors=FLOORS, hit_rate=hit, prompt_tokens=65536,
                         hit_source="test", prefix_caching=caching)


def _status(df, metric, stat="p50", mode="server"):
    return df[(df.metric == metric) & (df.stat == stat) & (df["mode"] == mode)].status.iloc[0]


def test_a_plausible_point_stays_valid_and_records_its_floors():
    df = _guard(_point(45.0, 4.2))
    assert set(df.status) == {"ok"}
    got = lambda m, s="value": float(df[(df.metric == m) & (df.stat == s)].value.iloc[0])  # noqa: E731
    assert got("prefix_cache_hit_rate") == 0.0
    assert 10 < got("ttft_floor_ms") < 20  # 1 x 1024 tokens, bf16 peak
    assert got("ttft_pct_of_floor", "p50") == pytest.approx(got("ttft_floor_ms") / 45.0 * 100)
    assert 0.9 < got("tpot_floor_ms") < 1.3  # ~5.7 GB of int4 weights at 4.8 TB/s
    assert got("tpot_pct_of_floor", "p50") < 100


def test_a_ttft_below_the_prefill_floor_is_flagged_impossible():
    df = _guard(_point(3.0, 4.2))  # 3 ms for 1024 tokens of an 8B model: impossible
    assert _status(df, "ttft_ms") == "invalid" and _status(df, "ttft_ms", "mean") == "invalid"
    assert "below the prefill floor" in df[(df.metric == "ttft_ms")].note.iloc[0]
    assert _status(df, "tpot_ms") == "ok"  # decode was not below its floor
    assert _status(df, "completed_requests", "value") == "ok"
    assert len(V.invalid_summary(df)) == 1


def test_a_tpot_below_the_memory_floor_is_flagged_impossible():
    df = _guard(_point(45.0, 0.5))  # 0.5 ms per step cannot read 5.7 GB at 4.8 TB/s
    assert _status(df, "tpot_ms") == "invalid" and _status(df, "ttft_ms") == "ok"
    assert "below the decode floor" in df[df.metric == "tpot_ms"].note.iloc[0]


def test_cache_hits_invalidate_every_timed_row():
    df = _guard(_point(45.0, 4.2), hit=0.984)
    for m in ("ttft_ms", "tpot_ms", "e2el_ms"):
        assert _status(df, m) == "invalid"
    assert "98.4% of prompt tokens" in V.invalid_summary(df).reason.iloc[0]
    assert _status(_guard(_point(45.0, 4.2), hit=0.005), "ttft_ms") == "ok"  # under 1%


def test_unknown_hit_rate_is_invalid_only_with_caching_on():
    assert _status(_guard(_point(45.0, 4.2), hit=math.nan, caching=True), "ttft_ms") == "invalid"
    assert _status(_guard(_point(45.0, 4.2), hit=math.nan, caching=False), "ttft_ms") == "ok"


def test_offline_batch_floor_scales_with_the_batch():
    df = _guard(_point(420.0, 16.4, mode="offline", concurrency=256))  # the old bf16 figure
    assert _status(df, "ttft_ms", "mean", "offline") == "invalid"
    floor = float(df[df.metric == "ttft_floor_ms"].value.iloc[0])
    assert floor > 3000


def test_an_offline_batch_larger_than_the_logged_kv_cache_ran_in_waves():
    # 32 x (1024 + 128) = 36,864 tokens; the "GPU KV cache size" an engine logged
    point = _point(9000.0, 40.0, mode="offline", concurrency=32)
    fits = V.guard_point(point, floors=FLOORS, hit_rate=0.0, prompt_tokens=32768,
                         hit_source="test", prefix_caching=False, kv_cache_tokens=36_864)
    assert set(fits.status) == {"ok"}
    short = V.guard_point(point, floors=FLOORS, hit_rate=0.0, prompt_tokens=32768,
                          hit_source="test", prefix_caching=False, kv_cache_tokens=30_000)
    for m in ("ttft_ms", "tpot_ms", "e2el_ms"):
        assert _status(short, m, "mean", "offline") == "invalid"
    assert V.invalid_summary(short).reason.iloc[0] == (
        "a batch of 32 x 1152 tokens (36,864) is more than the engine's KV cache of 30,000 "
        "tokens (its log): the batch ran in waves, its latency includes the wait")
    # a server point queues by design: its concurrency is not judged against the cache
    served = V.guard_point(_point(45.0, 4.2, concurrency=32), floors=FLOORS, hit_rate=0.0,
                           prompt_tokens=32768, hit_source="test", prefix_caching=False,
                           kv_cache_tokens=30_000)
    assert set(served.status) == {"ok"}


def test_batch_waves_leaves_contexts_past_a_sliding_window_unjudged():
    command_a = json.loads((Path(__file__).parents[2] /
                            "evalkit/assets/presets/command-a/config.json").read_text())
    assert V.batch_waves(LLAMA_8B, 64, 1152, 40_960) is not None
    assert V.batch_waves(LLAMA_8B, 32, 1152, 40_960) is None
    assert V.batch_waves(command_a, 64, 1152, 40_960) is not None  # inside the 4096 window
    assert V.batch_waves(command_a, 64, 8192, 40_960) is None  # the log's count overstates it
    assert V.batch_waves(LLAMA_8B, 64, 1152, None) is None
    assert V.batch_waves(None, 64, 1152, 40_960) is None


def test_server_cache_hit_rate_from_metrics_delta():
    delta = {"vllm:prompt_tokens_total": {"value": 8192.0},
             "vllm:prompt_tokens_cached_total": {"value": 8064.0},
             "vllm:prefix_cache_hits_total": {"value": 8064.0},
             "vllm:prefix_cache_queries_total": {"value": 8192.0}}
    rate, n, src = V.server_cache_hit_rate(delta)
    assert rate == pytest.approx(0.984375) and n == 8192 and "cached_total" in src
    rate, _, src = V.server_cache_hit_rate({"vllm:prefix_cache_hits_total": {"value": 0.0},
                                            "vllm:prefix_cache_queries_total": {"value": 100.0}})
    assert rate == 0.0
    assert math.isnan(V.server_cache_hit_rate({})[0])
    rate, n, _ = V.offline_cache_hit_rate([{"prompt_tokens": 100, "cached_tokens": 0},
                                           {"prompt_tokens": 100, "cached_tokens": 50}])
    assert rate == 0.25 and n == 200
    assert math.isnan(V.offline_cache_hit_rate([{"ttft_s": 1.0}])[0])


# ---- fresh prompts, no cache ----------------------------------------------------------


def test_every_point_trial_and_warmup_gets_its_own_prompts():
    seeds = {prompt_seed(0, w, c, r, t, role)
             for w in ("chat", "summarize") for c in (1, 4, 16) for r in (math.inf, 2.0)
             for t in range(3) for role in ("timed", "warmup")}
    assert len(seeds) == 2 * 3 * 2 * 3 * 2
    # the same point gets the same prompts on every variant's server (and in a rerun)
    assert prompt_seed(7, "chat", 4, math.inf, 1) == prompt_seed(7, "chat", 4, math.inf, 1)
    assert prompt_seed(7, "chat", 4, math.inf, 1) != prompt_seed(8, "chat", 4, math.inf, 1)


def test_engines_start_without_prefix_caching_unless_asked():
    e = EngineSpec()
    args = engine_cli_args(e, load_format=None, tokenizer=None, trust_remote_code=False)
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert engine_kwargs(e, load_format=None, tokenizer=None,
                         trust_remote_code=False)["enable_prefix_caching"] is False
    on = EngineSpec(prefix_caching=True)
    assert "--enable-prefix-caching" in engine_cli_args(on, load_format=None, tokenizer=None,
                                                        trust_remote_code=False)


def test_no_prefix_caching_flag_parses_in_installed_vllm():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--no-enable-prefix-caching"])
    assert args.enable_prefix_caching is False


# ---- trials and intervals -------------------------------------------------------------


def test_pooled_trials_give_intervals_and_spread():
    rng = np.random.default_rng(0)

    def trial(shift):
        t = list(40 + shift + rng.normal(0, 2, 30))
        return dict(ttft_ms=t, tpot_ms=[4.0] * 30, e2el_ms=[x + 500 for x in t], itl_ms=[],
                    completed=30, failed=0, output_tokens=30 * 128, input_tokens=30 * 1024,
                    duration_s=10.0, errors=[])

    m = LM.pool_metrics([trial(0), trial(0), trial(10)])
    assert m["completed"] == 90 and len(m["ttft_ms"]) == 90 and m["duration_s"] == 30.0
    rows = LM.interval_rows(m, mode="server", workload="w", concurrency=1)
    df = rec.make_records(rows, variant="v", stage="latency")
    get = lambda s: float(df[(df.metric == "ttft_ms") & (df.stat == s)].value.iloc[0])  # noqa: E731
    p50 = float(np.percentile(m["ttft_ms"], 50))
    assert get("p50_ci_low") < p50 < get("p50_ci_high")
    assert get("p50_ci_high") - get("p50_ci_low") < 10
    # one trial ran 10 ms slower: the spread says so
    assert 15 < get("trial_spread_pct") < 35
    assert int(df[(df.metric == "ttft_ms") & (df.stat == "trial_spread_pct")].n.iloc[0]) == 3
    # constant TPOT: a zero-width interval, no spread
    tp = df[(df.metric == "tpot_ms")].set_index("stat").value
    assert tp["p50_ci_low"] == tp["p50_ci_high"] == 4.0 and tp["trial_spread_pct"] == 0.0


def test_trial_files_in_trial_order_and_legacy(tmp_path):
    for t in (1, 0, 10):
        (tmp_path / f"chat_c1_rinf_t{t}.json").write_text("{}")
    (tmp_path / "chat_c1_rinf.summary.json").write_text("{}")
    (tmp_path / "chat_c16_rinf_t0.json").write_text("{}")
    names = [f.name for f in trial_files(tmp_path, "chat_c1_rinf")]
    assert names == ["chat_c1_rinf_t0.json", "chat_c1_rinf_t1.json", "chat_c1_rinf_t10.json"]
    (tmp_path / "old_c1_rinf.json.gz").write_bytes(b"")
    assert [f.name for f in trial_files(tmp_path, "old_c1_rinf")] == ["old_c1_rinf.json.gz"]
