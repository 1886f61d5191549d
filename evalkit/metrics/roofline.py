"""Physical floors of a latency measurement: the memory roofline of a decode step and the
compute floor of a prefill.

A measured time below its floor did not happen as claimed (a prompt served from the prefix
cache, a skipped step, a clock read in the wrong place): :mod:`evalkit.metrics.validity` flags such
points. Both floors use vendor peaks: a real measurement takes longer than either, so its
"% of floor" (floor / measured x 100) stays below 100.

* Decode (TPOT) floor: bytes one decode step must read (weights, plus every sequence's KV
  cache) / peak HBM bandwidth.
* Prefill (TTFT) floor: ``2 x active parameters x prompt tokens`` (linear layers) plus the
  causal attention matmuls, / peak dense tensor FLOP/s of the scheme's matmul format
  (bf16 for base and W4A16, whose int4 weights are expanded to bf16 at the MMA; FP8 for
  W4A8-FP8 and FP8-dynamic; INT8 for W8A8-INT8 and W4A8-INT8). Attention runs in bf16.

Sliding-window layers (Gemma 3, Cohere2/Command A, Mistral) attend to at most their window
(:func:`attention_windows`): past it, their KV cache and their attention FLOPs stop growing
with the context, and both floors count them so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from evalkit.core.environment import gpu_info
from evalkit.core.schemes import SCHEMES, Scheme

#: Peak memory bandwidth in GB/s (vendor figures) for the decode roofline.
BANDWIDTH_GBPS: dict[str, float] = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "GH200": 4000.0,
    "A100 SXM 80GB": 2039.0,
    "A100 PCIe 80GB": 1935.0,
    "A100 40GB": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
}

#: Peak dense tensor throughput in TFLOP/s (TOPS for int8), per matmul format, vendor data
#: sheets without sparsity. SXM parts unless named; H200 and GH200 share the H100 SXM core.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp8": 1978.9, "int8": 1978.9},
    "GH200": {"bf16": 989.4, "fp8": 1978.9, "int8": 1978.9},
    "H100 SXM": {"bf16": 989.4, "fp8": 1978.9, "int8": 1978.9},
    "H100 NVL": {"bf16": 835.5, "fp8": 1670.5, "int8": 1670.5},
    "H100 PCIe": {"bf16": 756.0, "fp8": 1513.0, "int8": 1513.0},
    "A100 SXM 80GB": {"bf16": 312.0, "int8": 624.0},
    "A100 PCIe 80GB": {"bf16": 312.0, "int8": 624.0},
    "A100 40GB": {"bf16": 312.0, "int8": 624.0},
    "L40S": {"bf16": 362.0, "fp8": 733.0, "int8": 733.0},
    "L4": {"bf16": 121.0, "fp8": 242.5, "int8": 242.5},
}


def gpu_model(name: str) -> str | None:
    """The key of BANDWIDTH_GBPS / PEAK_TFLOPS for a GPU name as nvidia-smi prints it.

    ``NVIDIA H100 80GB HBM3`` is the SXM part; the PCIe card reports ``H100 PCIe``.
    """
    n = name.upper()
    if "GH200" in n:
        return "GH200"
    if "H200" in n:
        return "H200"
    if "H100" in n:
        if "PCIE" in n:
            return "H100 PCIe"
        return "H100 NVL" if "NVL" in n else "H100 SXM"
    if "A100" in n:
        if "40GB" in n:
            return "A100 40GB"
        return "A100 PCIe 80GB" if "PCIE" in n else "A100 SXM 80GB"
    if "L40S" in n:
        return "L40S"
    if "L4" in n.split():
        return "L4"
    return None


def gpu_bandwidth_gbps(name: str) -> float | None:
    """Peak bandwidth for a GPU name as nvidia-smi prints it (None if not in the table)."""
    key = gpu_model(name)
    return BANDWIDTH_GBPS[key] if key else None


def cpu_copy_bandwidth_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Rough STREAM-copy estimate of CPU memory bandwidth (GB/s), best of ``repeats``.

    Copies a ``mib`` MiB array with numpy and counts read plus write bytes. One thread,
    shared machine: a lower bound on what the engine's threads can draw, not a peak.
    """
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def memory_bandwidth(device: str) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) for the engine device."""
    if device == "cuda":

        gpus = gpu_info()
        if not gpus:
            return None, "no GPU found"
        bw = gpu_bandwidth_gbps(gpus[0]["name"])
        return bw, (f"vendor peak for {gpus[0]['name']}" if bw else
                    f"{gpus[0]['name']} not in BANDWIDTH_GBPS")
    return cpu_copy_bandwidth_gbps(), "numpy copy estimate (rough STREAM-copy, 1 thread)"


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a Hugging Face config: ``text_config`` where the config
    nests one (multimodal models such as Gemma 3), else the config itself."""
    return config.get("text_config") or config


#: Keys the floors and memory estimates read from a decoder's config (Llama-style names),
#: besides an MLP width (``intermediate_size``, or ``moe_intermediate_size`` for experts).
DECODER_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


def decoder_config(config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``config`` where it names a decoder the way the floors read one (:data:`DECODER_KEYS`
    and an MLP width as positive integers, in ``text_config`` where it nests one), else
    None: a config in other terms (GPT-2's ``n_embd``, ``n_layer``) gets no floors or
    memory estimate rather than an exception."""
    if not isinstance(config, Mapping):
        return None
    c = text_config(config)
    width = c.get("moe_intermediate_size") or c.get("intermediate_size")
    try:
        ok = all(int(c[k]) > 0 for k in DECODER_KEYS) and int(width) > 0
    except (KeyError, TypeError, ValueError):
        return None
    return config if ok else None


#: Norm weight vectors (hidden_size each) per decoder layer, by ``model_type``; 2 elsewhere
#: (before attention, before the MLP). Cohere runs attention and MLP in parallel off one norm;
#: Gemma 2 and 3 also norm each block's output.
_NORMS_PER_LAYER = {"cohere": 1, "cohere2": 1, "gemma2": 4, "gemma3": 4, "gemma3_text": 4}
#: Model types with a query and a key norm (head_dim each) in every layer.
_QK_NORM_TYPES = ("qwen3", "qwen3_moe", "gemma3", "gemma3_text")
#: Model types whose q, k and v projections carry a bias without saying so in the config.
_QKV_BIAS_TYPES = ("qwen2", "qwen2_moe")


def _norm_bias_params(c: Mapping[str, Any], *, layers: int, h: int, heads: int, kv: int,
                      hd: int) -> int:
    """Weights of all norms (the layers' norms, their q/k norms, the final norm) and of the
    attention projections' biases: the small 16-bit vectors beside the linear layers."""
    per_layer = _NORMS_PER_LAYER.get(str(c.get("model_type")), 2) * h
    if c.get("model_type") in _QK_NORM_TYPES:
        per_layer += 2 * hd
    elif c.get("use_qk_norm"):  # Cohere: one norm per head
        per_layer += (heads + kv) * hd
    if c.get("attention_bias"):  # Llama-style: q, k, v and o
        per_layer += (heads + 2 * kv) * hd + h
    elif c.get("model_type") in _QKV_BIAS_TYPES:
        per_layer += (heads + 2 * kv) * hd
    return layers * per_layer + h


def attention_windows(config: Mapping[str, Any]) -> list[int | None]:
    """Per decoder layer, how many past tokens its attention can reach: None for global
    attention, else its sliding window.

    From ``layer_types`` where the config lists them (``sliding_attention`` layers get
    ``sliding_window``, every other layer is global); else from ``sliding_window_pattern``
    (Cohere2 and Gemma 3 before ``layer_types``: every pattern-th layer global, the others
    sliding); else a ``sliding_window`` applies to every layer (Mistral), unless
    ``use_sliding_window`` is false (Qwen2 and Qwen3 configs carry a window they do not use).
    A window of ``W`` counts ``W`` keys per query. Cohere2 in vLLM lets a query see ``W + 1``,
    one more: a floor counted with ``W`` stays a lower bound.
    """
    c = text_config(config)
    layers = int(c["num_hidden_layers"])
    window = c.get("sliding_window")
    if not window or c.get("use_sliding_window") is False:
        return [None] * layers
    w = int(window)
    types = c.get("layer_types")
    if types:
        return [w if str(t).startswith("sliding") else None for t in list(types)[:layers]]
    pattern = c.get("sliding_window_pattern") or c.get("_sliding_window_pattern")
    if pattern:
        return [w if (i + 1) % int(pattern) else None for i in range(layers)]
    return [w] * layers


def _keys_in_window(tokens: float, window: int | None) -> float:
    """Keys a causal attention layer holds for a context of ``tokens``: ``min(tokens, W)``."""
    return float(tokens) if window is None else float(min(tokens, window))


def _causal_pairs(tokens: float, window: int | None) -> float:
    """(query, key) pairs of a causal prefill of ``tokens`` under a window ``W`` (None: none).

    The integral of ``min(t, W)`` over ``t`` from 0 to ``L``: ``L^2 / 2`` up to the window,
    ``L x W - W^2 / 2`` past it (``L^2 / 2`` is a hair below the exact ``L (L + 1) / 2``:
    a floor stays a floor).
    """
    n = float(tokens)
    if window is None or n <= window:
        return n * n / 2
    return n * window - window * window / 2


def _moe_shape(c: Mapping[str, Any]) -> tuple[int, int, int]:
    """(routed experts, experts per token, expert intermediate size); (0, 0, 0) if dense."""
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    if experts <= 1:
        return 0, 0, 0
    topk = int(c.get("num_experts_per_tok") or 1)
    inter = int(c.get("moe_intermediate_size") or c["intermediate_size"])
    return experts, topk, inter


def _linear_bytes(shapes: Iterable[tuple[int, int]], s: Scheme) -> float:
    """Bytes of linear layers (in_features, out_features) under scheme ``s``."""
    total = 0.0
    for fin, fout in shapes:
        params = fin * fout
        if s.is_base:
            total += params * 2
            continue
        groups = (fin // s.group_size) * fout if s.group_size else fout
        total += params * s.weight_bits / 8 + groups * 2
    return total


def weight_bytes_split(config: Mapping[str, Any], scheme: Scheme | str) -> tuple[float, float]:
    """(bytes read by every token, bytes of all routed experts) of a decoder under ``scheme``.

    Linear layers of the decoder blocks (q, k, v, o and the MLP's gate, up, down) take
    ``params x weight_bits / 8`` plus one 16-bit scale per group (or per output channel);
    embeddings, the LM head (left unquantized; none where ``tie_word_embeddings``: the
    embedding is read back as the head), routers, norms and biases stay 16-bit. For a
    mixture-of-experts config (``num_experts``/``num_local_experts``) the MLP is one
    gate/up/down triple per routed expert (``moe_intermediate_size``), plus a shared expert
    where the config has one; the second figure is 0 for dense models.
    """
    s = SCHEMES[scheme] if isinstance(scheme, str) else scheme
    c = text_config(config)
    h = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    vocab = int(c["vocab_size"])
    attn = _linear_bytes([(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h)], s)
    experts, _, e_inter = _moe_shape(c)
    if experts:
        shared = int(c.get("shared_expert_intermediate_size") or 0)
        mlp = _linear_bytes([(h, shared), (h, shared), (shared, h)], s) if shared else 0.0
        mlp += h * experts * 2  # router, 16-bit
        routed = experts * _linear_bytes([(h, e_inter), (h, e_inter), (e_inter, h)], s)
    else:
        inter = int(c["intermediate_size"])
        mlp = _linear_bytes([(h, inter), (h, inter), (inter, h)], s)
        routed = 0.0
    emb = vocab * h * 2
    tied = config.get("tie_word_embeddings", c.get("tie_word_embeddings", True))
    head = 0 if tied else vocab * h * 2
    norms = _norm_bias_params(c, layers=layers, h=h, heads=heads, kv=kv, hd=hd) * 2
    return layers * (attn + mlp) + emb + head + norms, layers * routed


def estimate_weight_bytes(config: Mapping[str, Any], scheme: Scheme | str) -> int:
    """Bytes of all of a decoder's weights under ``scheme`` (see :func:`weight_bytes_split`)."""
    always, routed = weight_bytes_split(config, scheme)
    return int(always + routed)


def parameter_count(config: Mapping[str, Any]) -> int:
    """Weights of a decoder: embedding, LM head (once, if tied to the embedding), every
    layer's attention and MLP (all experts of a mixture), norms and biases.

    Half of the bf16 bytes of :func:`estimate_weight_bytes`: the base scheme stores every
    weight in 16 bits.
    """
    return estimate_weight_bytes(config, "base") // 2


def weight_read_fraction(config: Mapping[str, Any] | None, scheme: Scheme | str,
                         batch: int) -> float:
    """Share of all weight bytes one decode step of ``batch`` sequences must read.

    1 for dense models. For mixture-of-experts models only the routed experts some token
    picked are read: with ``E`` experts, ``k`` per token and routing assumed uniform and
    independent, ``E x (1 - (1 - k/E)^batch)`` distinct experts per layer are expected.
    """
    if config is None:
        return 1.0
    c = text_config(config)
    experts, topk, _ = _moe_shape(c)
    if not experts:
        return 1.0
    always, routed = weight_bytes_split(config, scheme)
    touched = 1.0 - (1.0 - min(topk, experts) / experts) ** max(batch, 1)
    return (always + routed * touched) / (always + routed)


def _kv_bytes_per_layer_token(c: Mapping[str, Any], dtype_bytes: int) -> int:
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    return 2 * kv * hd * dtype_bytes


def kv_bytes_per_sequence(config: Mapping[str, Any], context_tokens: float,
                          dtype_bytes: int = 2) -> float:
    """KV-cache bytes of one sequence of ``context_tokens`` tokens (K and V, all layers).

    ``sum over layers of 2 x kv_heads x head_dim x dtype_bytes x min(context, window)``: a
    sliding-window layer keeps, and a decode step reads, at most its window of keys
    (:func:`attention_windows`).
    """
    c = text_config(config)
    per = _kv_bytes_per_layer_token(c, dtype_bytes)
    return float(sum(per * _keys_in_window(context_tokens, w) for w in attention_windows(config)))


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int = 2, *,
                       context_tokens: float | None = None) -> float:
    """KV-cache bytes per token of context (K and V, all layers).

    Without ``context_tokens``: what one token occupies while every layer holds it (a
    context within the smallest sliding window). With it: the average over a context of
    that many tokens, ``kv_bytes_per_sequence / context_tokens``, lower than the first where
    sliding-window layers hold only their window.
    """
    if context_tokens is not None and context_tokens > 0:
        return kv_bytes_per_sequence(config, context_tokens, dtype_bytes) / float(context_tokens)
    c = text_config(config)
    return float(int(c["num_hidden_layers"]) * _kv_bytes_per_layer_token(c, dtype_bytes))


def decode_bytes_per_step(weight_bytes: float, *, kv_bytes_token: float = 0.0,
                          context_tokens: float = 0.0, batch: int = 1) -> float:
    """Bytes one decode step must read: all weights once, plus every sequence's KV cache.

    ``weight_bytes + batch x context_tokens x kv_bytes_token``; for a model with
    sliding-window layers pass ``kv_bytes_per_token(config, context_tokens=...)``, the
    per-token average at that context.
    """
    return float(weight_bytes) + batch * context_tokens * kv_bytes_token


def roofline_tpot_ms(bytes_per_step: float, gbps: float | None) -> float:
    """Memory-bound lower bound on TPOT: bytes per step / bandwidth, in ms (NaN if unknown)."""
    if not gbps or gbps <= 0 or math.isnan(gbps):
        return math.nan
    return bytes_per_step / (gbps * 1e9) * 1e3


# --------------------------------------------------------------------------------------
# prefill compute floor


def matmul_format(scheme: Scheme | str) -> str:
    """The number format the scheme's linear-layer matmuls run in: bf16, fp8 or int8."""
    s = SCHEMES[scheme] if isinstance(scheme, str) else scheme
    return s.activation if s.activation in ("fp8", "int8") else "bf16"


def gpu_peak_tflops(name: str, fmt: str) -> float | None:
    """Peak dense TFLOP/s of a GPU (nvidia-smi name) for matmul format ``fmt`` (None: unknown)."""
    key = gpu_model(name)
    return PEAK_TFLOPS.get(key, {}).get(fmt) if key else None


def active_linear_params(config: Mapping[str, Any]) -> float:
    """Linear-layer weights one token multiplies through, over all decoder layers.

    q, k, v, o and the MLP (for a mixture of experts: the ``k`` routed experts a token
    picks, the shared expert and the router). Embedding lookups cost no FLOPs; the LM head
    is counted apart (:func:`prefill_flops`), since a prefill needs it for its last token only.
    """
    c = text_config(config)
    h = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    attn = h * heads * hd * 2 + h * kv * hd * 2
    experts, topk, e_inter = _moe_shape(c)
    if experts:
        shared = int(c.get("shared_expert_intermediate_size") or 0)
        mlp = 3 * h * (topk * e_inter + shared) + h * experts
    else:
        mlp = 3 * h * int(c["intermediate_size"])
    return float(int(c["num_hidden_layers"]) * (attn + mlp))


def prefill_flops(config: Mapping[str, Any], prompt_tokens: int, sequences: int = 1
                  ) -> tuple[float, float]:
    """(linear-layer FLOPs, attention FLOPs) of prefilling ``sequences`` prompts.

    Linear: ``2 x active params x tokens`` for every prompt token, plus the LM head
    (``2 x hidden x vocab``) for each sequence's last token. Attention: ``Q K^T`` and
    ``P V`` under a causal mask, ``2 x 2 x heads x head_dim x pairs`` per layer and
    sequence of ``L`` tokens, where a global layer has ``L^2 / 2`` (query, key) pairs and
    a sliding-window layer of window ``W < L`` has ``L x W - W^2 / 2``
    (:func:`attention_windows`).
    """
    c = text_config(config)
    h = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    hd = int(c.get("head_dim") or h // heads)
    n = float(prompt_tokens)
    linear = sequences * (2.0 * active_linear_params(config) * n + 2.0 * h * int(c["vocab_size"]))
    pairs = sum(_causal_pairs(n, w) for w in attention_windows(config))
    attention = sequences * 4.0 * heads * hd * pairs
    return linear, attention


def prefill_floor_ms(config: Mapping[str, Any], scheme: Scheme | str, *, prompt_tokens: int,
                     sequences: int, gpu_name: str, gpus: int = 1) -> tuple[float, str]:
    """Least time ``sequences`` prompts of ``prompt_tokens`` can be prefilled in, in ms.

    Linear FLOPs at the peak of the scheme's matmul format, attention FLOPs at the bf16
    peak, over ``gpus`` GPUs (tensor parallel: each computes its share). NaN, with the
    reason, where the GPU's peak is not in PEAK_TFLOPS (CPUs among them).

    Returns:
        (floor in ms, how it was computed).
    """
    fmt = matmul_format(scheme)
    peak = gpu_peak_tflops(gpu_name, fmt)
    peak16 = gpu_peak_tflops(gpu_name, "bf16")
    if not peak or not peak16:
        return math.nan, f"no {fmt} peak FLOP/s known for {gpu_name or 'this device'}"
    linear, attn = prefill_flops(config, prompt_tokens, sequences)
    floor_s = (linear / (peak * 1e12) + attn / (peak16 * 1e12)) / max(gpus, 1)
    return floor_s * 1e3, (f"{sequences} x {prompt_tokens} prompt tokens: {linear / 1e12:.4g} "
                           f"TFLOP linear at {peak:g} TFLOP/s ({fmt}) + {attn / 1e12:.4g} TFLOP "
                           f"attention at {peak16:g} (bf16)" + (f", / {gpus} GPUs" if gpus > 1 else ""))
