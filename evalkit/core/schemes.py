"""The scheme registry: one name per quantization scheme, used in configs, records and plots.

Each scheme maps to an llm-compressor preset (``QuantizationModifier(scheme=...)``) and
carries what is known about where vLLM has a kernel for it. That knowledge is used only to
*plan* (and to reject combinations known not to run); the engine itself is always asked,
and what it said is what lands in the records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches

from evalkit.core.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme.

    Attributes:
        name: registry key, lower case (``w4a8_fp8``); the only spelling used in records.
        label: display name (``W4A8-FP8``).
        description: what is quantized and how.
        llmc_preset: llm-compressor / compressed-tensors preset scheme, ``None`` for base.
        weight_bits: bits per weight element (16 for base).
        activation: activation format at the matmul (``bf16``, ``int8``, ``fp8``).
        group_size: weight quantization group along the input dimension, ``None`` = per channel.
        save_format: compressed-tensors format passed to ``save_pretrained``; int4 weights
            must be ``pack-quantized`` for vLLM's int4 kernels.
        methods: quantization methods llm-compressor supports for it.
        cpu_requires: CPU ISA flags vLLM's CPU kernel needs; ``None`` = no CPU kernel at all.
        cpu_note: why it cannot run on CPU, for records.
        cpu_emulated: non-empty where vLLM's CPU backend runs the scheme without a kernel of
            its own (an emulation far slower than any real deployment): why.
        hopper_kernels: linear-kernel class names vLLM is expected to pick on Hopper.
    """

    name: str
    label: str
    description: str
    llmc_preset: str | None
    weight_bits: int
    activation: str
    group_size: int | None
    save_format: str | None
    methods: tuple[str, ...]
    cpu_requires: tuple[str, ...] | None
    cpu_note: str = ""
    cpu_emulated: str = ""
    hopper_kernels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_base(self) -> bool:
        return self.llmc_preset is None


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme(
            name="base",
            label="Base",
            description="unquantized weights and activations in the engine dtype",
            llmc_preset=None,
            weight_bits=16,
            activation="bf16",
            group_size=None,
            save_format=None,
            methods=("none",),
            cpu_requires=(),
        ),
        Scheme(
            name="w4a16",
            label="W4A16",
            description="int4 weights, group 128, symmetric; 16-bit activations",
            llmc_preset="W4A16",
            weight_bits=4,
            activation="bf16",
            group_size=128,
            save_format="pack-quantized",
            methods=("rtn", "gptq", "awq"),
            cpu_requires=("avx512f",),
            cpu_note="vLLM's CPU int4 weight-only GEMM (cpu_gemm_wna16) is built for AVX-512 only",
            hopper_kernels=("MacheteLinearKernel", "MarlinLinearKernel"),
        ),
        Scheme(
            name="w4a8_fp8",
            label="W4A8-FP8",
            description=(
                "int4 weights, group 128, symmetric; FP8 (e4m3) dynamic per-token activations "
                "(the Hopper CUTLASS W4A8 kernel)"
            ),
            llmc_preset="W4AFP8",
            weight_bits=4,
            activation="fp8",
            group_size=128,
            save_format="pack-quantized",
            methods=("rtn", "gptq"),
            cpu_requires=None,
            cpu_note="vLLM has no CPU scheme for int4 weights x FP8 activations (Hopper CUTLASS only)",
            hopper_kernels=("CutlassW4A8LinearKernel",),
        ),
        Scheme(
            name="w4a8_int8",
            label="W4A8-INT8",
            description="int4 weights, group 128, symmetric; int8 dynamic per-token activations",
            llmc_preset="W4A8",
            weight_bits=4,
            activation="int8",
            group_size=128,
            save_format="pack-quantized",
            methods=("rtn", "gptq"),
            cpu_requires=(),
        ),
        Scheme(
            name="w8a8_int8",
            label="W8A8-INT8",
            description="int8 per-channel weights; int8 dynamic per-token activations",
            llmc_preset="W8A8",
            weight_bits=8,
            activation="int8",
            group_size=None,
            save_format=None,
            methods=("rtn", "gptq"),
            cpu_requires=(),
            hopper_kernels=("CutlassInt8ScaledMMLinearKernel", "CutlassScaledMMLinearKernel"),
        ),
        Scheme(
            name="fp8_dynamic",
            label="FP8-dynamic",
            description="FP8 (e4m3) per-channel weights; FP8 dynamic per-token activations",
            llmc_preset="FP8_DYNAMIC",
            weight_bits=8,
            activation="fp8",
            group_size=None,
            save_format=None,
            methods=("rtn",),
            cpu_requires=(),
            cpu_emulated=("vLLM's CPU backend has no FP8 GEMM and emulates it in torch (~0.8 s "
                          "per output token for Gemma 3 270M on 2 cores)"),
            hopper_kernels=("CutlassFP8ScaledMMLinearKernel", "CutlassScaledMMLinearKernel"),
        ),
    ]
}

METHODS = ("none", "rtn", "gptq", "awq")


def get_scheme(name: str) -> Scheme:
    """Return the scheme registered under ``name`` (case-insensitive).

    Raises:
        ConfigError: unknown name, with the closest registered names.
    """
    key = name.strip().lower().replace("-", "_")
    if key in SCHEMES:
        return SCHEMES[key]
    hint = get_close_matches(key, SCHEMES, n=2)
    did = f" (did you mean {' or '.join(hint)}?)" if hint else ""
    raise ConfigError(f"unknown scheme '{name}'{did}; allowed: {', '.join(SCHEMES)}")


def cpu_flags() -> set[str]:
    """CPU ISA flags of this machine, from /proc/cpuinfo (empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kernel_expected(scheme: Scheme, flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether vLLM's CPU backend is expected to have a kernel for ``scheme`` here.

    Returns:
        (expected, reason) -- reason is empty when expected.
    """
    if scheme.cpu_requires is None:
        return False, scheme.cpu_note
    flags = cpu_flags() if flags is None else flags
    missing = [f for f in scheme.cpu_requires if f not in flags]
    if missing:
        return False, f"{scheme.cpu_note} (this CPU lacks {', '.join(missing)})"
    return True, ""


def cpu_latency_skip_reason(scheme: Scheme, flags: set[str] | None = None) -> str:
    """Why a CPU latency sweep of ``scheme`` is not worth starting ('' where it is): no CPU
    kernel here (vLLM would refuse the checkpoint after a ~1.5 min start) or an emulated
    path (minutes per point, and nothing a deployment would see)."""
    ok, why = cpu_kernel_expected(scheme, flags)
    if not ok:
        return f"no kernel: {why}"
    return f"emulated: {scheme.cpu_emulated}" if scheme.cpu_emulated else ""


_VLLM_SCHEME_RE = re.compile(r"\bCompressedTensors(?:W\w+)")


def vllm_scheme_activation(cls: str) -> str | None:
    """Activation format at the matmul of a vLLM compressed-tensors scheme class
    (``CompressedTensorsW4A8Fp8`` -> ``fp8``, ``...W8A8Int8``/``...WNA8Int`` -> ``int8``,
    ``...WNA16`` -> ``bf16``); None when the name does not say."""
    if "A16" in cls:
        return "bf16"
    if "A8Fp8" in cls:
        return "fp8"
    if "A8Int" in cls:
        return "int8"
    return None


def activation_mismatch(scheme: str, kernels: str | None) -> str | None:
    """Why a variant's figures are not its scheme's, if vLLM ran it with a scheme class whose
    activations differ from the checkpoint's (from the engine's ``Using X for
    CompressedTensorsY`` lines, e.g. :func:`evalkit.engine.provenance`'s ``linear_kernels``).

    vLLM picks the scheme from the checkpoint's quantization_config; a matcher that ignores
    the activation type runs an int8-activation checkpoint with FP8 activations, and every
    number measured then belongs to the other scheme.
    """
    s = SCHEMES.get(scheme)
    if s is None or s.is_base or not kernels:
        return None
    used = sorted(set(_VLLM_SCHEME_RE.findall(kernels)))
    wrong = [(c, a) for c in used if (a := vllm_scheme_activation(c)) and a != s.activation]
    if not wrong:
        return None
    what = ", ".join(f"{c} ({a} activations)" for c, a in wrong)
    return (f"vLLM ran {s.label}, a checkpoint with {s.activation} activations, with {what}: "
            f"its accuracy and latency are those of that scheme, not of {s.label}")
