"""How a variant is scored: the backend plan (vLLM server or transformers), the offline
environment, lm-eval's task manager and model objects, one simple_evaluate call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig
from evalkit.core.errors import EngineError
from evalkit.core.offline import OFFLINE_ENV
from evalkit.core.schemes import SCHEMES, cpu_kernel_expected
from evalkit.core.specs import Variant
from evalkit.stages.accuracy.settings import API_MAX_RETRIES, API_TIMEOUT_S, accuracy_spec


def hf_device(cfg: StudyConfig) -> str:
    """Device of the hf backend: the engine's device."""
    return "cuda" if cfg.engine.device == "cuda" else "cpu"


def hf_dtype(device: str) -> str:
    """Weight/activation dtype of the hf backend.

    On CPU float32: (1) compressed-tensors' fake quantization of activations computes
    ``round(x / scale)`` in the activation dtype; in bfloat16 (8-bit mantissa) the quotient
    is already rounded to steps of 0.5 above 64, so int8 emulation would add error the real
    int8 kernel does not have; (2) CPUs without AVX512-BF16/AMX run bfloat16 matmuls
    through conversions, slower than float32; (3) bf16 weights upcast to float32 exactly.
    On CUDA bfloat16, the dtype the checkpoints are written in and vLLM serves them in.
    """
    return "float32" if device == "cpu" else "bfloat16"


@dataclass(frozen=True)
class BackendPlan:
    """Which backend a variant is evaluated with, and why.

    Attributes:
        backend: ``vllm`` or ``hf``.
        fallback_ok: when True and vLLM refuses the checkpoint, evaluate with hf instead.
        note: why this backend (empty when it is the requested one).
    """

    backend: str
    fallback_ok: bool
    note: str = ""


def plan_backend(variant: Variant, device: str, flags: set[str] | None = None) -> BackendPlan:
    """The backend to try first for ``variant`` on ``device`` (``cpu`` or ``cuda``).

    ``auto`` on CPU asks :func:`evalkit.core.schemes.cpu_kernel_expected`; on CUDA every
    registered scheme has a vLLM kernel (Hopper). The engine is still asked at start-up
    (see the module docstring); this is the plan, not the verdict.
    """
    if variant.accuracy_backend == "hf":
        return BackendPlan("hf", False)
    if variant.accuracy_backend == "vllm":
        return BackendPlan("vllm", False)
    if device == "cpu":
        ok, why = cpu_kernel_expected(SCHEMES[variant.scheme], flags)
        if not ok:
            return BackendPlan("hf", False, f"hf backend: vLLM has no CPU kernel here ({why})")
    return BackendPlan("vllm", True)


def hf_activation_note(checkpoint: str | os.PathLike[str], model: Any | None = None) -> str:
    """What the hf backend does with the checkpoint's activation quantization.

    Reads ``quantization_config`` from the checkpoint's ``config.json``; when the loaded
    transformers ``model`` is given, also inspects its Linear modules: compressed-tensors
    attaches a ``quantization_scheme`` and, for schemes with input activations, a forward
    hook / wrapped forward that fake-quantizes the input (``quantization_enabled``).

    Returns:
        One sentence for the records' note; empty for an unquantized checkpoint.
    """
    try:
        cfg = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    q = cfg.get("quantization_config") or {}
    if not q:
        return ""
    acts = []
    for group in (q.get("config_groups") or {}).values():
        ia = group.get("input_activations")
        if ia:
            acts.append(f"{ia.get('type', '?')}{ia.get('num_bits', '?')}"
                        f"{' dynamic' if ia.get('dynamic') else ''}")
    if not acts:
        return "hf: weight-only checkpoint, weights decompressed to the compute dtype"
    desc = ", ".join(sorted(set(acts)))
    if model is None:
        return f"hf: checkpoint quantizes input activations ({desc}); not inspected"
    applied = _activation_quant_active(model)
    if applied is None:
        return f"hf: checkpoint quantizes input activations ({desc}); no quantized Linear found"
    if applied:
        return (f"hf: input activations fake-quantized ({desc}) and weights dequantized; "
                "matmul in the hf dtype, not an integer/FP8 kernel")
    return (f"hf: input activations NOT quantized ({desc} in the checkpoint is ignored by "
            "this transformers/compressed-tensors load); weights only")


def _activation_quant_active(model: Any) -> bool | None:
    """Whether the quantized Linears of ``model`` really fake-quantize their inputs.

    Checked by running one such layer on a random input twice, with compressed-tensors'
    ``quantization_enabled`` on and off: identical outputs mean the input quantization is
    not applied. Weights left compressed until the first forward (compressed-tensors'
    decompress hook) are decompressed first by a one-token forward of the model.

    Returns:
        None when no Linear carries a scheme with input activations.
    """
    import torch  # noqa: PLC0415

    layer = None
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None and getattr(scheme, "input_activations", None) is not None \
                and isinstance(module, torch.nn.Linear):
            layer = module
            break
    if layer is None:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        if hasattr(model, "ct_decompress_hook"):
            model(torch.ones((1, 1), dtype=torch.long, device=device))
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.randn((2, 3, layer.in_features), generator=gen) * 4).to(device, dtype)
        had = "quantization_enabled" in vars(layer)
        old = vars(layer).get("quantization_enabled")
        try:
            layer.quantization_enabled = True
            on = layer(x)
            layer.quantization_enabled = False
            off = layer(x)
        finally:
            if had:
                layer.quantization_enabled = old
            else:
                del layer.quantization_enabled
    return not torch.equal(on, off)


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """Set the offline variables for lm-eval / datasets / transformers, restoring afterwards.

    huggingface_hub and datasets read ``HF_HUB_OFFLINE`` when first imported; if they were
    imported earlier in this process with the hub enabled, their module constants are
    switched too, because there is no hub to reach here and a lookup would only hang.
    """
    old = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)

    flipped: list[tuple[Any, str, Any]] = []
    for modname, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                          ("datasets.config", "HF_HUB_OFFLINE"),
                          ("datasets.config", "HF_DATASETS_OFFLINE")):
        mod = sys.modules.get(modname)
        if mod is not None and getattr(mod, attr, True) is False:
            flipped.append((mod, attr, False))
            setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, val in flipped:
            setattr(mod, attr, val)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_manager(data: str) -> Any:
    """lm-eval TaskManager: evalkit's offline task pack for ``local``, lm-eval's for ``hub``."""
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    if data == "local":

        return taskpack.task_manager()
    return TaskManager()


def prepare_tasks(tm: Any, lm_tasks: Sequence[str]) -> dict[str, Any]:
    """Build each lm-eval task once (its documents read and processed into the datasets
    cache), so that evaluations started together in several threads find the data prepared
    instead of preparing it side by side. Returns lm-eval's task objects by name."""
    from lm_eval.tasks import get_task_dict  # noqa: PLC0415

    return dict(get_task_dict(list(lm_tasks), tm))


def tokenizer_adds_bos(checkpoint: str | os.PathLike[str], trust_remote_code: bool = False) -> bool:
    """Whether the checkpoint's tokenizer puts BOS in front of a plain encode.

    Both backends are given this as lm-eval's ``add_bos_token``. It matters: lm-eval's hf
    model leaves the tokenizer's default (Gemma's adds ``<bos>``), while its API models
    default to ``add_bos_token=False`` and would send the server prompts without BOS --
    a different input, and for Gemma a much worse score.
    """
    from transformers import AutoTokenizer  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=trust_remote_code)
    if tok.bos_token_id is None:
        return False
    ids = tok("a").input_ids
    return bool(ids) and ids[0] == tok.bos_token_id


def make_hf_lm(checkpoint: Path, cfg: StudyConfig, add_bos_token: bool) -> Any:
    """lm-eval's HFLM on ``checkpoint`` with the study's settings."""
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415

    device = hf_device(cfg)
    return HFLM(
        pretrained=str(checkpoint), dtype=hf_dtype(device), device=device,
        batch_size=accuracy_spec(cfg).batch_size, max_length=cfg.engine.max_model_len,
        trust_remote_code=cfg.model.trust_remote_code, add_bos_token=add_bos_token,
    )


def make_api_lm(base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                add_bos_token: bool) -> Any:
    """lm-eval's ``local-completions`` model against a running vLLM server."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI  # noqa: PLC0415

    acc = accuracy_spec(cfg)
    return LocalCompletionsAPI(
        base_url=base_url.rstrip("/") + "/v1/completions", model=served_name,
        tokenizer=str(tokenizer), tokenizer_backend="huggingface", tokenized_requests=True,
        num_concurrent=acc.batch_size, max_retries=API_MAX_RETRIES, timeout=API_TIMEOUT_S,
        max_length=cfg.engine.max_model_len, max_gen_toks=acc.max_gen_toks,
        batch_size=acc.requests_per_call,
        seed=acc.seed, trust_remote_code=cfg.model.trust_remote_code,
        add_bos_token=add_bos_token,
    )


def run_lm_eval(lm: Any, lm_task: str, cfg: StudyConfig, tm: Any) -> tuple[dict, dict]:
    """One ``simple_evaluate`` call for one task.

    Returns:
        (results, samples): lm-eval's results dict without samples (JSON-ready), and
        ``{subtask: [sample, ...]}`` as lm-eval logged them.
    """
    import lm_eval  # noqa: PLC0415
    from lm_eval.utils import handle_non_serializable  # noqa: PLC0415

    acc = accuracy_spec(cfg)

    def evaluate() -> Any:
        return lm_eval.simple_evaluate(
            model=lm, tasks=[lm_task], num_fewshot=acc.num_fewshot, limit=acc.limit,
            log_samples=True, apply_chat_template=acc.apply_chat_template,
            gen_kwargs={"max_gen_toks": acc.max_gen_toks}, task_manager=tm,
            random_seed=acc.seed, numpy_random_seed=acc.seed, torch_random_seed=acc.seed,
            fewshot_random_seed=acc.seed, bootstrap_iters=acc.bootstrap.resamples,
        )

    # lm-eval's API models call asyncio.run(), which refuses to start inside a running event
    # loop -- and a notebook kernel runs one. A worker thread has no loop of its own.

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lm-eval") as pool:
        out = pool.submit(evaluate).result()
    if out is None:
        raise EngineError(f"lm-eval returned no results for {lm_task}")
    samples = out.pop("samples", {})
    # Round-trip through JSON so results read from disk and fresh ones look the same.
    results = json.loads(json.dumps(out, default=handle_non_serializable))
    samples = json.loads(json.dumps(samples, default=handle_non_serializable))
    return results, samples
