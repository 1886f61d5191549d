"""Checks of a study that need the file system, the packaged assets, the task pack and the
machine (no model load): what ``evalkit validate`` and ``evalkit run`` check before anything
starts.

The schema itself (types, ranges, unknown keys, cross-field rules) is :mod:`evalkit.core.config`;
this module adds what the schema cannot know: that a packaged model or preset exists, a
path is a checkpoint, a task is in the task pack, the output root is writable, and that the
GPUs one engine asks for (``tensor_parallel_size x pipeline_parallel_size``) are there: on
this machine, or with ``executor: ray`` in the Ray cluster the engine will join.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.environment import gpu_info
from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES, cpu_kernel_expected
from evalkit.core.specs import EngineSpec


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
    :func:`gpu_shortfall`); nothing is probed for a CPU engine."""
    if cfg.engine.device != "cuda":
        return []
    supply, problem = probe_gpus(cfg.engine, ray_address=ray_address)
    if problem:
        return [f"{path}: {problem}"]
    short = gpu_shortfall(cfg.engine, supply, path)
    return [short] if short else []


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
