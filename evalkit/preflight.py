"""Checks of a study that need the file system, the packaged assets and the task pack (no
model load): what ``evalkit validate`` and ``evalkit run`` check before anything starts.

The schema itself (types, ranges, unknown keys, cross-field rules) is :mod:`evalkit.core.config`;
this module adds what the schema cannot know: that a packaged model or preset exists, a
path is a checkpoint, a task is in the task pack, the output root is writable.
"""

from __future__ import annotations

import os
import tempfile
from difflib import get_close_matches
from pathlib import Path

from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES, cpu_kernel_expected


def load_study(path: str | os.PathLike[str], *, check: bool = True) -> StudyConfig:
    """Load and validate a study file.

    Args:
        path: YAML file.
        check: also run :func:`semantic_problems` (paths, tasks, hardware combinations).

    Raises:
        ConfigError: one line per problem.
    """
    cfg = read_study(path)
    if check:
        problems = semantic_problems(cfg, str(Path(path)))
        if problems:
            raise ConfigError(problems)
    return cfg


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
