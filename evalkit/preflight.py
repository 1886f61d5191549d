"""Checks of a study that need the file system, the packaged assets, the task pack and the
machine (no model load): what ``evalkit validate`` and ``evalkit run`` check before anything
starts.

The schema itself (types, ranges, unknown keys, cross-field rules) is :mod:`evalkit.core.config`;
this module adds what the schema cannot know: that a packaged model or preset exists, a
path is a checkpoint, a task is in the task pack, the output root is writable, that an
offline batch fits the KV cache it is given in one wave, that the GPUs one engine asks for
(``tensor_parallel_size x pipeline_parallel_size``) are there: on this machine, or with
``executor: ray`` in the Ray cluster the engine will join, and that each variant's weights
and KV cache fit this machine's GPU memory.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.environment import gpu_info
from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES, cpu_kernel_expected
from evalkit.core.specs import EngineSpec
from evalkit.metrics.roofline import (
    decoder_config,
    estimate_weight_bytes,
    kv_bytes_per_sequence,
)

GIB = 2**30


def load_study(path: str | os.PathLike[str], *, check: bool = True,
               hardware: bool = True) -> StudyConfig:
    """Load and validate a study file.

    Args:
        path: YAML file.
        check: also run :func:`semantic_problems` (paths, tasks, hardware combinations).
        hardware: with ``check``, also run :func:`gpu_problems` (the GPUs an engine asks
            for against those this machine or its Ray cluster has).

    Raises:
        ConfigError: one line per problem.
    """
    cfg = read_study(path)
    if check:
        problems = semantic_problems(cfg, str(Path(path)))
        if hardware:
            problems += gpu_problems(cfg, str(Path(path)))
        if problems:
            raise ConfigError(problems)
    return cfg


@dataclass(frozen=True)
class GpuSupply:
    """GPUs an engine can be placed on, as counted before it starts.

    Attributes:
        gpus: how many.
        where: where they were counted, for the message (``this machine (...)``, ``the Ray
            cluster at auto``).
        cluster: counted in a Ray cluster (else on this machine only).
    """

    gpus: int
    where: str
    cluster: bool = False


def gpu_shortfall(engine: EngineSpec, supply: GpuSupply, path: str = "<config>") -> str | None:
    """The problem line when one engine asks for more GPUs than ``supply`` has, else None.

    One engine spans ``tensor_parallel_size x pipeline_parallel_size`` GPUs (vLLM's world
    size). A CPU engine asks for none. A machine without any GPU (and no Ray cluster) is
    not judged: it is where a GPU study is written and validated, not run; an engine
    started there fails as it always did.
    """
    if engine.device != "cuda":
        return None
    need = engine.gpus_per_engine
    if need <= supply.gpus or (supply.gpus == 0 and not supply.cluster):
        return None
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    line = (f"{path}: engine.tensor_parallel_size x engine.pipeline_parallel_size: {tp} x {pp} "
            f"= {need} GPUs requested for one engine, {supply.gpus} found on {supply.where}; "
            f"allowed: a product of at most {supply.gpus}")
    if engine.executor != "ray":
        line += (" (an engine spans several nodes only with engine.executor: ray and "
                 "RAY_ADDRESS naming a running Ray cluster)")
    return line


def probe_gpus(engine: EngineSpec, *, ray_address: str | None = None
               ) -> tuple[GpuSupply, str | None]:
    """Count the GPUs ``engine`` can be placed on, starting nothing.

    With ``executor: ray`` and a cluster, that is a cluster address (``ray_address``, else
    ``RAY_ADDRESS``) or a cluster this process has joined already (a run that schedules
    its variants on Ray): the cluster's GPU resources (``ray.cluster_resources()``; joined
    with ``ray.init(address=...)``, which connects to a running cluster and never starts
    one, and left again unless this process had joined it before). Otherwise the GPUs of
    this machine that CUDA_VISIBLE_DEVICES leaves visible (nvidia-smi): vLLM's Ray executor
    without an address starts Ray on this machine, with its GPUs only.

    Returns:
        (supply, problem): the count, and a problem line body (``KEY: what; allowed``) when
        the engine cannot start for another reason found on the way (no ``ray`` package, no
        cluster answering at the address).
    """
    local = gpu_info()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    here = GpuSupply(len(local), "this machine (nvidia-smi"
                     + (f", CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ")"))
    if engine.device != "cuda" or engine.executor != "ray":
        return here, None
    address = ray_address or os.environ.get("RAY_ADDRESS")
    try:
        import ray  # noqa: PLC0415 -- optional; only for executor ray
    except ImportError as exc:
        if not address and not local:
            return here, None  # a machine without GPU or cluster: not judged (gpu_shortfall)
        return here, (f"engine.executor: ray needs the ray package, not importable here "
                      f"({exc}); allowed: install ray in this environment, or executor "
                      "auto or mp (one machine)")
    joined = ray.is_initialized()
    if not joined and (not address or address == "local"):
        return here, None  # "local" starts a Ray of this machine, as no address does
    unreachable = None if joined else gcs_unreachable(str(address))
    if unreachable:
        return here, _no_cluster(str(address), unreachable)
    try:
        if not joined:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        gpus = int(ray.cluster_resources().get("GPU", 0))
    except (OSError, RuntimeError, ValueError) as exc:
        return here, _no_cluster(str(address), str(exc).splitlines()[0] if str(exc)
                                 else type(exc).__name__)
    finally:
        if not joined and ray.is_initialized():
            ray.shutdown()
    where = (f"the Ray cluster at {address}" if not joined
             else "the Ray cluster this process has joined")
    return GpuSupply(gpus, where, cluster=True), None


def _no_cluster(address: str, why: str) -> str:
    return (f"engine.executor: ray: no Ray cluster answers at RAY_ADDRESS={address} ({why}); "
            "allowed: RAY_ADDRESS naming a running cluster (`ray start --head` on one node, "
            "`ray start --address=HEAD:6379` on the others), or unset to run on this machine")


def gcs_unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why a ``host:port`` (or ``ray://host:port``) Ray address takes no TCP connection, else
    None; None also for addresses Ray resolves itself (``auto``).

    ``ray.init`` retries a dead address for minutes; this answers in ``timeout_s``.
    """
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{hostport}: {exc.strerror or exc}"


def gpu_problems(cfg: StudyConfig, path: str = "<config>", *,
                 ray_address: str | None = None) -> list[str]:
    """The GPUs one engine of ``cfg`` asks for against those found (:func:`probe_gpus`,
    :func:`gpu_shortfall`), then each variant's memory against this machine's GPUs
    (:func:`gpu_memory_problems`; not for an engine placed by Ray, whose GPUs may be
    elsewhere); nothing is probed for a CPU engine."""
    if cfg.engine.device != "cuda":
        return []
    supply, problem = probe_gpus(cfg.engine, ray_address=ray_address)
    if problem:
        return [f"{path}: {problem}"]
    short = gpu_shortfall(cfg.engine, supply, path)
    if short:
        return [short]
    if cfg.engine.executor == "ray":
        return []
    return gpu_memory_problems(cfg, decoder_config(assets.model_config(cfg.model)),
                               gpu_info(), path)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def offline_kv_problems(cfg: StudyConfig, config: Mapping[str, Any] | None,
                        path: str = "<config>") -> list[str]:
    """Offline batches that would not fit ``engine.kv_cache_memory_gib`` in one wave.

    A whole batch's TTFT means every sequence prefilled at once; when the KV cache holds
    fewer than the batch's ``input_len + output_len`` tokens per sequence, vLLM admits part
    of the batch and the rest waits (or is preempted while decoding), and the batch's TTFT
    then includes that wait. Per GPU, one sequence holds
    ``kv_bytes_per_sequence(config, input_len + output_len)`` (sliding-window layers at most
    their window) over ``tensor_parallel_size x pipeline_parallel_size``. Judged only where
    the KV cache size is set (else vLLM sizes it from ``gpu_memory_utilization`` at start)
    and the model's config is at hand without loading it, in the terms the floors read
    (:func:`~evalkit.metrics.roofline.decoder_config`); mixes never run offline.
    """
    lat, eng = cfg.latency, cfg.engine
    if lat is None or "offline" not in lat.modes or eng.kv_cache_memory_gib is None \
            or config is None:
        return []
    kv = eng.kv_cache_memory_gib * GIB
    shards = eng.gpus_per_engine
    out = []
    for i, w in enumerate(lat.workloads):
        if w.lengths_vary:
            continue
        per_seq = kv_bytes_per_sequence(config, w.input_len + w.output_len) / shards
        fit = int(kv // per_seq)
        big = [b for b in lat.levels(w, "offline") if b > fit]
        if not big:
            continue
        if w.batch_sizes is not None:
            key = f"latency.workloads[{i}].batch_sizes"
        elif lat.batch_sizes is not None:
            key = "latency.batch_sizes"
        elif w.concurrency is not None:
            key = f"latency.workloads[{i}].concurrency"
        else:
            key = "latency.concurrency"
        need = max(big) * per_seq
        where = " per GPU" if shards > 1 else ""
        out.append(
            f"{path}: {key}: offline batch {', '.join(map(str, big))} of workload '{w.name}' "
            f"needs {_gib(need)} of KV cache{where} ({w.input_len}+{w.output_len} tokens a "
            f"sequence, {per_seq / 2**20:.0f} MiB each), more than engine.kv_cache_memory_gib "
            f"{eng.kv_cache_memory_gib:g}: the batch would run in waves and its TTFT would "
            f"include the wait; allowed: batches of at most {fit}, or kv_cache_memory_gib of "
            f"at least {need / GIB:.1f}")
    return out


def gpu_memory_problems(cfg: StudyConfig, config: Mapping[str, Any] | None,
                        gpus: Sequence[Mapping[str, str]], path: str = "<config>") -> list[str]:
    """Variants whose weights and KV cache cannot fit the smallest of ``gpus``.

    ``gpus`` as :func:`evalkit.core.environment.gpu_info` lists them (``memory`` like
    ``81559 MiB``). Per GPU a variant holds :func:`estimate_weight_bytes` over
    ``tensor_parallel_size x pipeline_parallel_size`` plus ``engine.kv_cache_memory_gib``
    (vLLM then ignores ``gpu_memory_utilization``); without a KV cache size, its weights must
    fit ``gpu_memory_utilization`` of the GPU. Servers started side by side
    (``engine.parallel_starts``, for accuracy and server-mode latency) hold the largest
    ``parallel_starts`` variants at once.
    Activations, CUDA graphs and the CUDA context come on top, so only what cannot fit in
    any case is reported. Not judged without a GPU or the model's config (in the terms
    :func:`~evalkit.metrics.roofline.decoder_config` reads).
    """
    eng = cfg.engine
    sizes = []
    for g in gpus:
        amount, _, unit = str(g.get("memory", "")).partition(" ")
        if amount.isdigit() and unit == "MiB":
            sizes.append((int(amount) * 2**20, str(g.get("name", "GPU"))))
    if eng.device != "cuda" or config is None or not sizes:
        return []
    total, gpu = min(sizes)
    shards = eng.gpus_per_engine
    kv = (eng.kv_cache_memory_gib or 0.0) * GIB
    limit = total if eng.kv_cache_memory_gib is not None else eng.gpu_memory_utilization * total
    held = []
    out = []
    for i, v in enumerate(cfg.variants):
        weights = estimate_weight_bytes(config, v.scheme) / shards
        held.append(weights + kv)
        if weights + kv <= limit:
            continue
        per = " per GPU" if shards > 1 else ""
        if eng.kv_cache_memory_gib is not None:
            what = (f"{_gib(weights)} of weights ({v.scheme}){per} + "
                    f"engine.kv_cache_memory_gib {eng.kv_cache_memory_gib:g}")
            allowed = (f"a kv_cache_memory_gib well below {(total - weights) / GIB:.1f}, "
                       "a larger engine.tensor_parallel_size, or a GPU with more memory")
        else:
            what = f"{_gib(weights)} of weights ({v.scheme}){per}"
            allowed = ("a larger engine.gpu_memory_utilization, a larger "
                       "engine.tensor_parallel_size, or a GPU with more memory")
        room = (f"the {_gib(total)} of one {gpu}" if limit == total else
                f"gpu_memory_utilization {eng.gpu_memory_utilization:g} of one {gpu} "
                f"({_gib(limit)} of {_gib(total)})")
        out.append(f"{path}: variants[{i}] ({v.name}): {what} is more than {room}, before "
                   f"activations, CUDA graphs and the CUDA context; allowed: {allowed}")
    # servers start side by side for accuracy and for latency in server mode
    k = eng.parallel_starts if cfg.accuracy is not None or (
        cfg.latency is not None and "server" in cfg.latency.modes) else 1
    if not out and k > 1 and len(held) > 1:
        side = sum(sorted(held, reverse=True)[:k])
        if side > total:
            out.append(f"{path}: engine.parallel_starts: {min(k, len(held))} servers side by "
                       f"side hold {_gib(side)} of weights and KV cache per GPU, more than "
                       f"the {_gib(total)} of one {gpu}; allowed: parallel_starts: 1, or a "
                       "smaller kv_cache_memory_gib")
    return out


def semantic_problems(cfg: StudyConfig, path: str = "<config>") -> list[str]:
    """Checks that need the file system or registries but no model load."""
    out: list[str] = []
    model = cfg.model
    if model.source == "packaged" and model.name not in assets.PACKAGED_MODELS:
        out.append(
            f"{path}: model.name: unknown packaged model '{model.name}'; allowed: "
            f"{', '.join(assets.PACKAGED_MODELS)}"
        )
    if model.source == "preset" and model.name not in assets.list_presets():
        out.append(
            f"{path}: model.name: unknown architecture preset '{model.name}'; allowed: "
            f"{', '.join(assets.list_presets())}"
        )
    if model.source == "hf_dir" and model.path is not None and not (model.path / "config.json").is_file():
        out.append(f"{path}: model.path: '{model.path}' is not a checkpoint directory (no config.json)")
    if model.source == "gguf" and model.path is not None and not (
            model.path.is_file() and model.path.suffix == ".gguf"):
        out.append(f"{path}: model.path: '{model.path}' is not an existing .gguf file")
    if model.trust_remote_code and model.source in ("packaged", "preset", "gguf"):
        # Model code only comes with a Hugging Face checkpoint; turning it on elsewhere
        # would let whatever sits in the converted/cached directory run.
        out.append(f"{path}: model.trust_remote_code: applies to source hf_dir or hub only "
                   f"(source {model.source} carries no model code); allowed: false")

    if cfg.accuracy is not None:
        allowed = taskpack.available_tasks(cfg.accuracy.data)
        for i, task in enumerate(cfg.accuracy.tasks):
            if task not in allowed:
                hint = get_close_matches(task, allowed, n=2)
                did = f" (did you mean {' or '.join(hint)}?)" if hint else ""
                shown = ", ".join(sorted(allowed)[:12]) + (" ..." if len(allowed) > 12 else "")
                out.append(
                    f"{path}: accuracy.tasks[{i}]: unknown task '{task}' for data={cfg.accuracy.data}"
                    f"{did}; allowed: {shown}"
                )

    out += offline_kv_problems(cfg, decoder_config(assets.model_config(cfg.model)), path)
    dims = assets.linear_dims(cfg.model)
    for i, variant in enumerate(cfg.variants):
        scheme = SCHEMES[variant.scheme]
        gs = variant.effective_group_size
        if dims and gs:
            bad = sorted({dim for dim in dims if dim % gs})
            if bad:
                out.append(
                    f"{path}: variants[{i}] ({variant.name}): group size {gs} does not divide the "
                    f"model's linear input dims {bad}; allowed: a group size dividing all of "
                    f"{sorted(set(dims))} (set variants[{i}].group_size)"
                )
        if cfg.engine.device == "cpu":
            ok, why = cpu_kernel_expected(scheme)
            if not ok and variant.accuracy_backend == "vllm":
                out.append(
                    f"{path}: variants[{i}] ({variant.name}): accuracy_backend=vllm on a CPU engine "
                    f"is impossible: {why}; allowed: accuracy_backend auto or hf"
                )
            if not ok and cfg.latency is not None and cfg.latency.unsupported == "error":
                out.append(
                    f"{path}: variants[{i}] ({variant.name}): latency on a CPU engine is impossible: "
                    f"{why}; allowed: latency.unsupported=record, or drop the variant"
                )
            if variant.method in ("gptq", "awq") and model.source == "preset":
                out.append(f"{path}: variants[{i}]: {variant.method} needs real weights, not a preset")
        if variant.name in cfg.engine.kernel_override and cfg.engine.device != "cuda":
            out.append(f"{path}: engine.kernel_override[{variant.name}]: kernel overrides need device cuda")
    if model.source == "preset":
        for i, variant in enumerate(cfg.variants):
            if variant.method not in ("none", "rtn"):
                out.append(
                    f"{path}: variants[{i}] ({variant.name}): presets have random weights; only "
                    f"method rtn is meaningful (got {variant.method})"
                )

    cal = cfg.quantize.calibration.dataset
    if not cal.startswith("taskpack:") and not Path(cal).is_file():
        out.append(f"{path}: quantize.calibration.dataset: no such file '{cal}'")
    if cfg.quality is not None and not cfg.quality.text.startswith("taskpack:") \
            and not Path(cfg.quality.text).is_file():
        out.append(f"{path}: quality.text: no such file '{cfg.quality.text}'; allowed: "
                   "taskpack:lambada_openai or an existing .txt/.jsonl file")

    root = cfg.output_root
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not _can_write(probe):
        out.append(f"{path}: output_root: '{root}' is not writable (checked '{probe}': "
                   "read-only, full or not ours); allowed: a directory this user can write")
    return out


def _can_write(directory: Path) -> bool:
    """Whether a file can really be created in ``directory``.

    ``os.access`` alone says yes to root on a read-only tree (chmod) and knows nothing of
    full disks or immutable directories, so a temporary file is created and removed.
    """
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".evalkit-probe-"):
            pass
    except OSError:
        return False
    return True
