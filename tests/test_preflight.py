"""evalkit.preflight's GPU checks: the GPUs one engine asks for (tensor x pipeline parallel)
against those found on this machine or in the Ray cluster it would join; each variant's
weights and KV cache against a GPU's memory; an offline batch against the KV cache it is
given."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from evalkit.assets.models import model_config, preset_config
from evalkit.core.environment import gpu_info
from evalkit.core.errors import ConfigError
from evalkit.core.specs import EngineSpec
from evalkit.metrics.roofline import estimate_weight_bytes, kv_bytes_per_sequence
from evalkit.preflight import (
    GpuSupply,
    gpu_memory_problems,
    gpu_shortfall,
    load_study,
    offline_kv_problems,
    probe_gpus,
)

RAY = importlib.util.find_spec("ray") is not None
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_an_engine_asking_for_more_gpus_than_found_gets_one_line():
    two_nodes = EngineSpec(device="cuda", tensor_parallel_size=4, pipeline_parallel_size=2,
                           executor="ray")
    cluster = GpuSupply(8, "the Ray cluster at auto", cluster=True)
    assert gpu_shortfall(two_nodes, cluster, "s.yaml") is None
    line = gpu_shortfall(two_nodes, GpuSupply(4, "the Ray cluster at auto", cluster=True),
                         "s.yaml")
    assert line == ("s.yaml: engine.tensor_parallel_size x engine.pipeline_parallel_size: "
                    "4 x 2 = 8 GPUs requested for one engine, 4 found on the Ray cluster at "
                    "auto; allowed: a product of at most 4")
    # on one machine without Ray the message says how an engine spans nodes
    one = EngineSpec(device="cuda", tensor_parallel_size=2, pipeline_parallel_size=2)
    line = gpu_shortfall(one, GpuSupply(2, "this machine (nvidia-smi)"), "s.yaml")
    assert "= 4 GPUs requested" in line and "2 found on this machine (nvidia-smi)" in line
    assert "engine.executor: ray and RAY_ADDRESS" in line
    assert gpu_shortfall(one, GpuSupply(4, "this machine (nvidia-smi)")) is None
    # a CPU engine asks for none; a machine with no GPU and no cluster is not judged, but an
    # empty cluster is
    assert gpu_shortfall(EngineSpec(), GpuSupply(0, "this machine (nvidia-smi)")) is None
    assert gpu_shortfall(one, GpuSupply(0, "this machine (nvidia-smi)")) is None
    assert "0 found on the Ray cluster" in gpu_shortfall(
        one, GpuSupply(0, "the Ray cluster at auto", cluster=True))


def test_probe_counts_this_machines_visible_gpus_without_starting_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for engine in (EngineSpec(device="cuda", tensor_parallel_size=2),
                   EngineSpec(device="cuda", pipeline_parallel_size=2, executor="ray")):
        supply, problem = probe_gpus(engine)
        assert supply.gpus == len(gpu_info()) and not supply.cluster
        assert supply.where.startswith("this machine (nvidia-smi")
        if not (engine.executor == "ray" and not RAY and supply.gpus):
            assert problem is None, problem
    if RAY:
        import ray

        assert not ray.is_initialized()  # counting did not start or join Ray


def _study(tmp_path, engine: dict) -> str:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump({
        "study": "t", "model": {"source": "preset", "name": "llama-3.1-70b"},
        "variants": [{"name": "base", "scheme": "base"}],
        "latency": {"workloads": [{"name": "chat", "input_len": 32, "output_len": 8}],
                    "concurrency": [1]},
        "engine": engine, "output_root": str(tmp_path / "out")}), encoding="utf-8")
    return str(p)


def test_a_study_spanning_two_nodes_loads_and_reaches_the_engine(tmp_path, monkeypatch):
    from evalkit.engine.options import engine_cli_args, engine_kwargs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = _study(tmp_path, {"device": "cuda", "tensor_parallel_size": 4,
                             "pipeline_parallel_size": 2, "executor": "ray"})
    if len(gpu_info()) and not RAY:
        with pytest.raises(ConfigError, match="engine.executor: ray needs the ray package"):
            load_study(path)
    cfg = load_study(path, hardware=False)
    e = cfg.engine
    assert (e.tensor_parallel_size, e.pipeline_parallel_size, e.vllm_executor()) == (4, 2, "ray")
    assert e.gpus_per_engine == 8
    cli = engine_cli_args(e, load_format="dummy", tokenizer=None, trust_remote_code=False)
    assert cli[cli.index("--pipeline-parallel-size") + 1] == "2"
    assert engine_kwargs(e, load_format="dummy", tokenizer=None,
                         trust_remote_code=False)["pipeline_parallel_size"] == 2
    with pytest.raises(ConfigError) as info:
        load_study(_study(tmp_path, {"device": "cuda", "pipeline_parallel_size": 2,
                                     "executor": "uni"}))
    assert info.value.problems == [
        f"{tmp_path / 'study.yaml'}: engine: executor 'uni' runs one process: "
        "tensor_parallel_size x pipeline_parallel_size must be 1 (got 1 x 2); allowed: auto "
        "(vLLM picks mp on one machine), mp, ray"]


def test_executor_ray_with_a_cluster_address_but_no_ray_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    path = _study(tmp_path, {"device": "cuda", "pipeline_parallel_size": 2, "executor": "ray"})
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(
        f"{path}: engine.executor: ray needs the ray package, not importable here")
    assert "allowed: install ray in this environment, or executor auto or mp" in \
        info.value.problems[0]


_CLUSTER = """
import sys, ray
ray.init(address="local", num_cpus=1, num_gpus=3, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_executor_ray_counts_the_gpus_of_the_cluster_at_ray_address(tmp_path, monkeypatch):
    """A real Ray cluster of this machine that declares 3 GPUs (Ray counts what a node
    declares): an engine of 2 x 2 asks for more, one of 1 x 3 fits; a dead address is one
    line, found in seconds."""
    import subprocess
    import sys

    ray = pytest.importorskip("ray")
    # a throwaway cluster: no token to share between its processes and this one
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        monkeypatch.setenv("RAY_ADDRESS", address)
        too_big = _study(tmp_path, {"device": "cuda", "tensor_parallel_size": 2,
                                    "pipeline_parallel_size": 2, "executor": "ray"})
        with pytest.raises(ConfigError) as info:
            load_study(too_big)
        assert info.value.problems == [
            f"{too_big}: engine.tensor_parallel_size x engine.pipeline_parallel_size: 2 x 2 "
            f"= 4 GPUs requested for one engine, 3 found on the Ray cluster at {address}; "
            "allowed: a product of at most 3"]
        assert not ray.is_initialized()  # the probe left the cluster again
        fits = EngineSpec(device="cuda", pipeline_parallel_size=3, executor="ray")
        assert probe_gpus(fits) == (GpuSupply(3, f"the Ray cluster at {address}",
                                              cluster=True), None)
        # a process that has joined the cluster already (variants scheduled on Ray) is
        # counted there without any address, and stays joined
        monkeypatch.delenv("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=False)
        try:
            assert probe_gpus(fits) == (GpuSupply(
                3, "the Ray cluster this process has joined", cluster=True), None)
            assert ray.is_initialized()
        finally:
            ray.shutdown()
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    supply, problem = probe_gpus(fits, ray_address=address)  # the cluster is gone
    assert not supply.cluster
    assert problem.startswith(f"engine.executor: ray: no Ray cluster answers at "
                              f"RAY_ADDRESS={address} (")


# nvidia-smi's memory.total of the two Hopper cards the reference runs used
H100 = {"index": "0", "name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"}
H200 = {"index": "0", "name": "NVIDIA H200", "memory": "143771 MiB"}


def _shipped(name: str):
    cfg = load_study(CONFIGS / f"{name}.yaml", hardware=False)
    return cfg, model_config(cfg.model)


def test_the_111b_shape_with_a_24_gib_kv_cache_fits_an_h200_and_not_an_h100():
    cfg, config = _shipped("hopper-command-a")
    weights = estimate_weight_bytes(config, "w4a16") / 2**30
    assert 57 < weights < 58.5  # docs/hopper.md's table: 57.7 GiB
    assert gpu_memory_problems(cfg, config, [H200]) == []
    lines = gpu_memory_problems(cfg, config, [H100], "ca.yaml")
    assert len(lines) == 2  # one line per variant
    assert lines[0].startswith(f"ca.yaml: variants[0] (w4a16): {weights:.1f} GiB of weights "
                               "(w4a16) + engine.kv_cache_memory_gib 24 is more than the "
                               "79.6 GiB of one NVIDIA H100 80GB HBM3")
    assert f"a kv_cache_memory_gib well below {81559 / 1024 - weights:.1f}" in lines[0]
    # the H100 study of the same shape fits the H100; the smallest visible GPU is the judge
    small, config = _shipped("hopper-command-a-h100")
    assert gpu_memory_problems(small, config, [H100]) == []
    assert len(gpu_memory_problems(cfg, config, [H200, H100])) == 2
    # no GPU, or an unreadable memory field: not judged
    assert gpu_memory_problems(cfg, config, []) == []
    assert gpu_memory_problems(cfg, config, [{**H100, "memory": "[N/A]"}]) == []
    assert gpu_memory_problems(cfg, None, [H100]) == []


def test_two_70b_servers_side_by_side_fit_an_h200_not_an_h100():
    cfg, config = _shipped("hopper-llama70b-complete")
    assert cfg.engine.parallel_starts == 2
    assert gpu_memory_problems(cfg, config, [H200]) == []
    (line,) = gpu_memory_problems(cfg, config, [H100], "c.yaml")
    assert line.startswith("c.yaml: engine.parallel_starts: 2 servers side by side hold ")
    assert "allowed: parallel_starts: 1" in line
    one = cfg.model_copy(update={"engine": cfg.engine.model_copy(
        update={"parallel_starts": 1})})
    assert gpu_memory_problems(one, config, [H100]) == []
    # offline batches run one engine at a time: parallel_starts does not apply
    offline = cfg.model_copy(update={"latency": cfg.latency.model_copy(
        update={"modes": ("offline",)})})
    assert gpu_memory_problems(offline, config, [H100]) == []


def test_without_a_kv_cache_size_the_weights_must_fit_the_memory_utilization():
    cfg, config = _shipped("hopper-command-a-h100")
    eng = cfg.engine.model_copy(update={"kv_cache_memory_gib": None,
                                        "gpu_memory_utilization": 0.5})
    lines = gpu_memory_problems(cfg.model_copy(update={"engine": eng}), config, [H100])
    assert len(lines) == 2 and "gpu_memory_utilization 0.5 of one NVIDIA H100 80GB HBM3 " \
        "(39.8 GiB of 79.6 GiB)" in lines[0]
    eng = eng.model_copy(update={"gpu_memory_utilization": 0.9})
    assert gpu_memory_problems(cfg.model_copy(update={"engine": eng}), config, [H100]) == []


def test_an_offline_batch_larger_than_its_kv_cache_is_refused_before_anything_starts(tmp_path):
    src = yaml.safe_load((CONFIGS / "hopper-command-a-h100.yaml").read_text(encoding="utf-8"))
    src["latency"]["concurrency"] = [1, 16, 40, 64]
    src["output_root"] = str(tmp_path / "out")
    p = tmp_path / "ca.yaml"
    p.write_text(yaml.safe_dump(src), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_study(p, hardware=False)
    per_seq = kv_bytes_per_sequence(preset_config("command-a"), 1024 + 128)
    assert per_seq == 1152 * 256 * 1024  # every layer holds the context inside the window
    fit = int(10 * 2**30 // per_seq)
    assert fit == 35
    assert info.value.problems == [
        f"{p}: latency.concurrency: offline batch 40, 64 of workload 'chat' needs 18.0 GiB of "
        "KV cache (1024+128 tokens a sequence, 288 MiB each), more than "
        "engine.kv_cache_memory_gib 10: the batch would run in waves and its TTFT would "
        "include the wait; allowed: batches of at most 35, or kv_cache_memory_gib of at "
        "least 18.0"]
    # a workload's own batch sizes are named as such; two GPUs split a sequence's KV cache
    cfg, config = _shipped("hopper-command-a-h100")
    lat = cfg.latency
    w = lat.workloads[0].model_copy(update={"batch_sizes": (64,)})
    wide = cfg.model_copy(update={"latency": lat.model_copy(update={"workloads": (w,)})})
    (line,) = offline_kv_problems(wide, config, "s.yaml")
    assert line.startswith("s.yaml: latency.workloads[0].batch_sizes: offline batch 64 ")
    tp2 = wide.model_copy(update={"engine": wide.engine.model_copy(
        update={"tensor_parallel_size": 2})})
    assert offline_kv_problems(tp2, config) == []
    # server mode only, no KV cache size, or no config at hand: not judged
    served = wide.model_copy(update={"latency": wide.latency.model_copy(
        update={"modes": ("server",)})})
    assert offline_kv_problems(served, config) == []
    auto = wide.model_copy(update={"engine": wide.engine.model_copy(
        update={"kv_cache_memory_gib": None})})
    assert offline_kv_problems(auto, config) == []
    assert offline_kv_problems(wide, None) == []



def test_a_config_in_other_terms_is_not_judged_rather_than_a_crash(tmp_path):
    """GPT-2 names its sizes n_embd, n_layer, n_head: evalkit validate then skips the memory
    and KV checks (and the latency stage the floors) instead of failing on a missing key."""
    from evalkit.metrics.roofline import decoder_config
    from evalkit.stages.latency.rows import roofline_inputs

    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
            "vocab_size": 50257}
    assert decoder_config(gpt2) is None and decoder_config(None) is None
    assert decoder_config({**gpt2, "hidden_size": 768, "num_attention_heads": 12,
                           "num_hidden_layers": "twelve", "intermediate_size": 3072}) is None
    ca = preset_config("command-a")
    assert decoder_config(ca) is ca
    nested = {"model_type": "gemma3", "text_config": ca}  # multimodal configs nest the decoder
    assert decoder_config(nested) is nested
    assert decoder_config(preset_config("qwen3-30b-a3b")) is not None  # experts' MLP width
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(gpt2), encoding="utf-8")
    src = yaml.safe_load((CONFIGS / "hopper-command-a-h100.yaml").read_text(encoding="utf-8"))
    src["model"] = {"source": "hf_dir", "path": str(d)}
    src["latency"]["concurrency"] = [64]  # too big for the KV cache, were it judged
    src["report"]["concurrency"] = 64
    src["output_root"] = str(tmp_path / "out")
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(src), encoding="utf-8")
    cfg = load_study(p, hardware=False)
    assert list(cfg.latency.levels(cfg.latency.workloads[0], "offline")) == [64]
    wb, kvb, config = roofline_inputs(cfg.variants[0], d, {})
    assert config is None and math.isnan(wb) and math.isnan(kvb)  # no floors, no crash
    from evalkit.metrics.validity import FloorModel
    floors = FloorModel(config=config, scheme="w4a16", hardware="NVIDIA H100 80GB HBM3",
                        weight_bytes=wb, bandwidth_gbps=3350.0, bandwidth_is_peak=True)
    assert floors.ttft_floor_ms(1024, 1)[1] == floors.tpot_floor_ms(1024, 1)[1] == \
        "no model config"
