"""Quantize stage: one compressed-tensors checkpoint per study variant, built with llm-compressor.

Each quantized variant becomes a checkpoint directory under the engine cache::

    cache_dir()/checkpoints/<model>-<SCHEME LABEL>[-g<group>][-<method>]-<hash12>/
        config.json               with compressed-tensors' ``quantization_config``
        model.safetensors         compressed weights (absent for architecture presets)
        tokenizer files
        evalkit_quantize.json     key, timings, versions, settings

The hash (:func:`checkpoint_key`) covers everything that changes the checkpoint's bytes: the
model's provenance, scheme, method, group size, ignore list, calibration settings (for
methods that calibrate) and the llm-compressor / compressed-tensors versions. A checkpoint
with the same key is reused, never rebuilt or overwritten; a new one is built under a
temporary name and renamed into place while a lock on its name is held.

Methods:
    rtn: ``QuantizationModifier`` (round to nearest, no data).
    gptq: ``GPTQModifier``; for w8a8_int8 preceded by ``SmoothQuantModifier(0.8)``, as in
        llm-compressor's W8A8 example.
    awq: ``AWQModifier`` followed by ``QuantizationModifier`` (llm-compressor's AWQ recipe).

Architecture presets (random weights, loaded by vLLM with ``load_format="dummy"``) get a
checkpoint with no weights: the preset's ``config.json`` with the ``quantization_config``
that llm-compressor would write for the scheme, produced by the same compressed-tensors
calls on a weightless (meta-device) instance of the architecture.

The module imports no torch / llm-compressor at import time, so :func:`checkpoint_for` and
:func:`checkpoints` work from the evaluation environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from evalkit.core.config import Calibration, QuantizeSpec, StudyConfig, Variant
from evalkit.core.environment import hardware_label
from evalkit.core.errors import AssetError, ConfigError, RunDirError, StageError
from evalkit.core.io import atomic_dir, atomic_write_json, file_lock, json_exists, read_json
from evalkit.core.records import make_records
from evalkit.core.run import Run
from evalkit.core.schemes import SCHEMES, Scheme, cpu_kernel_expected

if TYPE_CHECKING:
    from evalkit.assets.models import ResolvedModel

STAGE = "quantize"
BACKEND = "llm-compressor"
METADATA_FILE = "evalkit_quantize.json"
#: Bump when the way recipes are built changes, so old cached checkpoints are not reused.
RECIPE_VERSION = 2  # 2: calibrated methods run in float32 on CPUs
#: SmoothQuant strength before GPTQ for int8 activations (llm-compressor's W8A8 example).
SMOOTHQUANT_STRENGTH = 0.8
#: Methods that run calibration data through the model.
CALIBRATED_METHODS = ("gptq", "awq")
#: Files of a checkpoint that hold weights (not copied into preset checkpoints).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class QuantizedCheckpoint:
    """A quantized checkpoint on disk and what it cost.

    Attributes:
        path: checkpoint directory (loadable by transformers / vLLM).
        key: :func:`checkpoint_key` of the settings that built it.
        cached: True when this call reused an existing checkpoint.
        wall_s: seconds this call took (near zero when cached).
        quantize_s: seconds the build took (load + llm-compressor + save), from the
            checkpoint's metadata, so the same number is reported on reuse.
        size_bytes: bytes of all files in the directory (weights, config, tokenizer).
        weight_bytes: bytes of the targeted linear layers' tensors as stored (packed
            weights + scales + zero points); NaN where the checkpoint has no weights.
        quantization_config: the ``quantization_config`` dict from ``config.json``.
        method: rtn | gptq | awq.
        scheme: scheme registry name.
    """

    path: Path
    key: str
    cached: bool
    wall_s: float
    quantize_s: float
    size_bytes: int
    weight_bytes: float
    quantization_config: dict[str, Any]
    method: str
    scheme: str


# --------------------------------------------------------------------------------------
# keys and names (pure)


def library_versions() -> dict[str, str | None]:
    """Installed llm-compressor and compressed-tensors versions (None where absent)."""
    out: dict[str, str | None] = {}
    for dist in ("llmcompressor", "compressed-tensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _key_material(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec) -> dict[str, Any]:
    scheme = SCHEMES[variant.scheme]
    material: dict[str, Any] = {
        "recipe_version": RECIPE_VERSION,
        "model": {"name": model.name, "source": model.source, "weights_real": model.weights_real,
                  "provenance": model.provenance},
        "scheme": scheme.name,
        "preset": scheme.llmc_preset,
        "method": variant.method,
        "group_size": variant.effective_group_size,
        "save_format": scheme.save_format,
        "ignore": list(qspec.ignore),
        "versions": library_versions(),
    }
    if variant.method in CALIBRATED_METHODS:
        material["calibration"] = qspec.calibration.model_dump(mode="json")
        if variant.method == "gptq" and scheme.name == "w8a8_int8":
            material["smoothquant_strength"] = SMOOTHQUANT_STRENGTH
    return material


def checkpoint_key(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec) -> str:
    """Hash of everything that determines a quantized checkpoint's contents.

    Covers model provenance, scheme (and its llm-compressor preset and save format),
    method, effective group size, ignore list, calibration settings (only for methods that
    calibrate: gptq, awq), the SmoothQuant strength where used, and the installed
    llm-compressor and compressed-tensors versions. The variant's *name* is not part of it,
    so two studies that ask for the same quantization share one checkpoint.

    Returns:
        64 hex characters (SHA-256).
    """
    blob = json.dumps(_key_material(model, variant, qspec), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def checkpoint_name(model: ResolvedModel, variant: Variant, key: str) -> str:
    """Directory name: ``<model>-<LABEL>[-g<group>][-<method>]-<hash12>`` (rtn is implied)."""
    scheme = SCHEMES[variant.scheme]
    parts = [_slug(model.name), scheme.label]
    if variant.group_size is not None and variant.group_size != scheme.group_size:
        parts.append(f"g{variant.group_size}")
    if variant.method != "rtn":
        parts.append(str(variant.method))
    parts.append(key[:12])
    return "-".join(parts)


def checkpoint_root() -> Path:
    """Where quantized checkpoints are cached: ``cache_dir()/checkpoints``."""
    from evalkit.assets.models import cache_dir

    return Path(cache_dir()) / "checkpoints"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._-") or "model"


# --------------------------------------------------------------------------------------
# sizes (safetensors headers only: no torch needed)


def dir_size_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of all regular files under ``path`` (symlinks followed)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _safetensors_sizes(path: Path) -> dict[str, int]:
    """Tensor name -> stored bytes, read from a safetensors header (no data loaded)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items() if k != "__metadata__"}


def weight_bytes(checkpoint: str | os.PathLike[str], modules: set[str]) -> float:
    """Bytes stored for the tensors of ``modules`` (weights, packed weights, scales, zero points).

    Args:
        checkpoint: checkpoint directory with ``*.safetensors`` files.
        modules: module names (``model.layers.0.mlp.down_proj``) whose tensors count.

    Returns:
        the byte count; NaN when the checkpoint holds no safetensors or none of the
        modules' tensors (e.g. an architecture preset).
    """
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    total, found = 0, False
    for f in files:
        for name, nbytes in _safetensors_sizes(f).items():
            if name.rsplit(".", 1)[0] in modules:
                total += nbytes
                found = True
    return float(total) if found else float("nan")


def target_linear_modules(checkpoint: str | os.PathLike[str], ignore: tuple[str, ...]) -> set[str]:
    """Names of the Linear modules a scheme quantizes (all Linear minus ``ignore``).

    Built on a weightless (meta-device) instance of the checkpoint's architecture with
    compressed-tensors' own matcher, so it costs no memory and matches what
    llm-compressor targets.
    """
    from compressed_tensors.utils import match_named_modules

    model = _meta_model(Path(checkpoint))
    return {name for name, _ in match_named_modules(model, ["Linear"], list(ignore))}


def _meta_model(checkpoint: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


# --------------------------------------------------------------------------------------
# scheme, recipe, calibration


def build_scheme(variant: Variant):
    """The compressed-tensors ``QuantizationScheme`` for a variant (preset + group override).

    Raises:
        ConfigError: the scheme has no llm-compressor preset (base).
    """
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = SCHEMES[variant.scheme]
    if scheme.llmc_preset is None:
        raise ConfigError(f"variant {variant.name}: scheme {scheme.name} is not quantized")
    qscheme = preset_name_to_scheme(scheme.llmc_preset, ["Linear"])
    gs = variant.group_size
    if gs is not None and qscheme.weights is not None and qscheme.weights.group_size != gs:
        qscheme = qscheme.model_copy(
            update={"weights": qscheme.weights.model_copy(update={"group_size": gs})}
        )
    return qscheme


def build_recipe(variant: Variant, qspec: QuantizeSpec) -> list[Any]:
    """llm-compressor modifiers for the variant's method (see module docstring)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = {"group_0": build_scheme(variant)}
    ignore = list(qspec.ignore)
    if variant.method == "rtn":
        return [QuantizationModifier(targets=["Linear"], config_groups=groups, ignore=ignore)]
    if variant.method == "gptq":
        recipe: list[Any] = []
        if variant.scheme == "w8a8_int8":
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

            recipe.append(SmoothQuantModifier(smoothing_strength=SMOOTHQUANT_STRENGTH))
        recipe.append(GPTQModifier(targets=["Linear"], config_groups=groups, ignore=ignore))
        return recipe
    if variant.method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(),
                QuantizationModifier(targets=["Linear"], config_groups=groups, ignore=ignore)]
    raise ConfigError(
        f"variant {variant.name}: method '{variant.method}' cannot quantize; "
        "allowed: rtn, gptq, awq"
    )


def load_calibration_texts(cal: Calibration) -> tuple[list[str], str]:
    """Calibration texts and a description of where they came from.

    Raises:
        ConfigError: the file is missing, unreadable or holds fewer texts than asked for.
    """
    if cal.dataset.startswith("taskpack:"):
        from evalkit.assets import taskpack

        texts = list(taskpack.calibration_texts(cal.num_samples, cal.seed))
        where = f"{cal.dataset} (taskpack.calibration_texts, seed {cal.seed})"
    else:
        p = Path(cal.dataset)
        try:
            raw = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"quantize.calibration.dataset: cannot read '{p}' ({exc.strerror or exc})"
            ) from None
        if p.suffix == ".jsonl":
            pool = []
            for i, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(
                        f"quantize.calibration.dataset: {p}:{i} is not JSON; allowed: one "
                        "object per line with a 'text' field"
                    ) from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise ConfigError(
                        f"quantize.calibration.dataset: {p}:{i} has no string 'text' field"
                    )
                pool.append(rec["text"])
        else:
            pool = [line for line in raw.splitlines() if line.strip()]
        if len(pool) < cal.num_samples:
            raise ConfigError(
                f"quantize.calibration.dataset: '{p}' holds {len(pool)} texts, "
                f"num_samples asks for {cal.num_samples}; allowed: num_samples <= {len(pool)}"
            )
        texts = random.Random(cal.seed).sample(pool, cal.num_samples)
        where = f"{p} ({len(pool)} texts, {cal.num_samples} drawn with seed {cal.seed})"
    if len(texts) < cal.num_samples:
        raise ConfigError(
            f"quantize.calibration: {cal.dataset} gave {len(texts)} texts, "
            f"num_samples asks for {cal.num_samples}"
        )
    return texts, where


def _calibration_dataset(tokenizer, cal: Calibration) -> tuple[Any, dict[str, Any]]:
    """Tokenized calibration set: one sequence per text, truncated to ``seq_len`` tokens.

    Texts are not packed: like llm-compressor's examples, each sample is one document
    cut at ``seq_len``; the token counts actually used are returned for the metadata.
    """
    from datasets import Dataset

    texts, where = load_calibration_texts(cal)
    enc = tokenizer(texts, truncation=True, max_length=cal.seq_len, add_special_tokens=True)
    lengths = [len(ids) for ids in enc["input_ids"]]
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    info = {
        **cal.model_dump(mode="json"), "source": where, "samples": len(lengths),
        "tokens_total": int(sum(lengths)), "tokens_min": min(lengths), "tokens_max": max(lengths),
        "tokens_mean": sum(lengths) / len(lengths),
    }
    return ds, info


def resolve_device(qspec: QuantizeSpec) -> str:
    """The device llm-compressor will run on for ``qspec.device``.

    llm-compressor always calibrates on the accelerator when one is visible, so the
    choice can only be checked, not forced, here.

    Raises:
        ConfigError: cuda asked for but absent, or cpu asked for while a GPU is visible.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if qspec.device == "auto":
        return "cuda" if has_cuda else "cpu"
    if qspec.device == "cuda" and not has_cuda:
        raise ConfigError(
            "quantize.device: cuda requested but torch sees no GPU; allowed: auto, cpu"
        )
    if qspec.device == "cpu" and has_cuda:
        raise ConfigError(
            "quantize.device: cpu requested but a GPU is visible and llm-compressor uses it; "
            "allowed: auto or cuda (or hide GPUs with CUDA_VISIBLE_DEVICES='')"
        )
    return qspec.device


def _no_accelerator() -> bool:
    import torch

    return not torch.accelerator.is_available()


# --------------------------------------------------------------------------------------
# building checkpoints


def _copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in WEIGHT_INDEXES or f.name.endswith(WEIGHT_SUFFIXES):
            continue
        if f.name in ("config.json", METADATA_FILE):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def _build_preset(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec, out: Path,
                  ) -> dict[str, Any]:
    """A weightless checkpoint: preset config + the quantization_config llm-compressor writes.

    The config comes from the same calls llm-compressor's ``save_pretrained`` makes
    (``QuantizationModifier.resolved_config`` -> ``apply_quantization_config`` ->
    ``ModelCompressor.from_pretrained_model(format)`` -> ``update_config``), run on a
    meta-device model, so the ignore list and formats are what a real run would write.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.quantization.group_size_validation import (
        validate_group_size_divisibility,
    )

    scheme = SCHEMES[variant.scheme]
    src = Path(model.path)
    meta = _meta_model(src)
    modifier = QuantizationModifier(
        targets=["Linear"], config_groups={"group_0": build_scheme(variant)},
        ignore=list(qspec.ignore),
    )
    apply_quantization_config(meta, modifier.resolved_config)
    validate_group_size_divisibility(meta, modifier.resolved_targets, list(qspec.ignore))
    compressor = ModelCompressor.from_pretrained_model(meta, quantization_format=scheme.save_format)
    if compressor.quantization_config is None:
        raise AssetError(f"{src}: no Linear module matched for {scheme.label}; nothing to quantize")
    compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED
    shutil.copy2(src / "config.json", out / "config.json")
    compressor.update_config(str(out))
    copied = _copy_non_weight_files(src, out)
    return {"preset_files_copied": copied, "load_format": "dummy"}


def _build_real(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec, out: Path,
                ) -> dict[str, Any]:
    """Load, run llm-compressor's oneshot, save compressed; returns timings and settings."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = SCHEMES[variant.scheme]
    src = Path(model.path)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src)
    # The checkpoint's own dtype, as llm-compressor's examples load models; scales are
    # stored in it and unquantized layers (embeddings, norms, ignored) keep it.
    lm = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    lm.eval()
    saved_dtype = lm.dtype
    upcast = (variant.method in CALIBRATED_METHODS and _no_accelerator()
              and saved_dtype in (torch.bfloat16, torch.float16))
    if upcast:
        # CPUs without native bf16/fp16 matrix units emulate them: calibration forwards and
        # GPTQ's updates ran ~15x slower in bf16 than in float32 on a 2-core AVX-512 Xeon
        # (1205 s vs 78 s for Gemma 3 270M, 16 x 128 tokens). Calibrate in float32, then
        # store in the checkpoint's dtype as usual.
        lm = lm.to(torch.float32)
    t_load = time.perf_counter() - t0

    recipe = build_recipe(variant, qspec)
    kwargs: dict[str, Any] = {}
    cal_info: dict[str, Any] | None = None
    if variant.method in CALIBRATED_METHODS:
        ds, cal_info = _calibration_dataset(tokenizer, qspec.calibration)
        kwargs = dict(dataset=ds, max_seq_length=qspec.calibration.seq_len,
                      num_calibration_samples=qspec.calibration.num_samples,
                      shuffle_calibration_samples=False)
    torch.manual_seed(0)
    t1 = time.perf_counter()
    oneshot(model=lm, recipe=recipe, **kwargs)
    t_oneshot = time.perf_counter() - t1

    t2 = time.perf_counter()
    if upcast:
        lm = lm.to(saved_dtype)
    save_kw = {"quantization_format": scheme.save_format} if scheme.save_format else {}
    lm.save_pretrained(out, save_compressed=True, **save_kw)
    tokenizer.save_pretrained(out)
    t_save = time.perf_counter() - t2
    return {
        "dtype": str(lm.dtype).removeprefix("torch."),
        "calibration_dtype": "float32" if upcast else str(saved_dtype).removeprefix("torch."),
        "recipe": [type(m).__name__ for m in recipe],
        "calibration": cal_info,
        "load_s": t_load, "oneshot_s": t_oneshot, "save_s": t_save,
    }


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise AssetError(
            f"{path}: checkpoint directory exists without {METADATA_FILE} (not built by "
            "evalkit or damaged); delete it to rebuild"
        )
    meta = read_json(meta_path)
    qcfg = read_json(path / "config.json").get("quantization_config")
    if not isinstance(qcfg, dict):
        raise AssetError(
            f"{path}/config.json: no quantization_config; delete the directory to rebuild"
        )
    return meta, qcfg


def quantize_variant(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec,
                     ) -> QuantizedCheckpoint:
    """Return the variant's quantized checkpoint, building it unless it is cached.

    Args:
        model: the resolved base model (real weights, or an architecture preset).
        variant: a quantized variant (not base).
        qspec: ignore list, calibration and device settings.

    Raises:
        ConfigError: base variant, impossible device, unusable calibration data, or a
            calibrating method on a preset (random weights).
        AssetError: a damaged cached checkpoint.
    """
    t0 = time.perf_counter()
    scheme = SCHEMES[variant.scheme]
    if scheme.is_base:
        raise ConfigError(f"variant {variant.name}: base is not quantized; nothing to build")
    if not model.weights_real and variant.method != "rtn":
        raise ConfigError(
            f"variant {variant.name}: {model.name} is a preset with random weights; only "
            f"method rtn is meaningful (got {variant.method})"
        )
    if variant.method == "awq" and _no_accelerator():
        # llm-compressor's AWQModifier pins its activation cache for host-to-device copies
        # (IntermediatesCache.pin_memory), which torch refuses without an accelerator.
        raise ConfigError(
            f"variant {variant.name}: method awq needs a GPU with llm-compressor "
            f"{library_versions()['llmcompressor']} (its AWQ cache pins memory for device "
            "transfers: 'Cannot access accelerator device when none is available'); "
            "allowed on CPU: rtn, gptq"
        )
    key = checkpoint_key(model, variant, qspec)
    final = checkpoint_root() / checkpoint_name(model, variant, key)
    lock = final.parent / f".{final.name}.lock"
    with file_lock(lock, what=f"checkpoint {final.name}", blocking=True):
        cached = final.exists()
        if not cached:
            device = resolve_device(qspec) if model.weights_real else "cpu"
            with atomic_dir(final) as tmp:
                tb = time.perf_counter()
                if model.weights_real:
                    extra = _build_real(model, variant, qspec, tmp)
                else:
                    extra = _build_preset(model, variant, qspec, tmp)
                meta = {
                    "key": key, "name": final.name,
                    "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                    "quantize_s": time.perf_counter() - tb,
                    "device": device, "hardware": hardware_label(device),
                    "settings": _key_material(model, variant, qspec),
                    "model_path": str(model.path), "variant": variant.model_dump(mode="json"),
                    "scheme_label": scheme.label, **extra,
                }
                atomic_write_json(tmp / METADATA_FILE, meta)
        meta, qcfg = _read_checkpoint(final)
        if meta.get("key") != key:
            raise AssetError(
                f"{final}: metadata key {str(meta.get('key'))[:12]} does not match {key[:12]}; "
                "delete the directory to rebuild"
            )
    modules = target_linear_modules(final, qspec.ignore) if model.weights_real else set()
    return QuantizedCheckpoint(
        path=final, key=key, cached=cached, wall_s=time.perf_counter() - t0,
        quantize_s=float(meta["quantize_s"]), size_bytes=dir_size_bytes(final),
        weight_bytes=weight_bytes(final, modules) if modules else float("nan"),
        quantization_config=qcfg, method=str(variant.method), scheme=scheme.name,
    )


# --------------------------------------------------------------------------------------
# the stage


def _metric_rows(variant: Variant, *, quantize_s: float | None, size: float, wbytes: float,
                 base_wbytes: float, note: str) -> list[dict[str, Any]]:
    common = dict(variant=variant.name, scheme=variant.scheme, method=variant.method,
                  stage=STAGE, stat="value", note=note or None)
    ratio = base_wbytes / wbytes if wbytes > 0 and base_wbytes > 0 else float("nan")
    rows = []
    if quantize_s is not None:
        rows.append(dict(metric="quantize_time_s", value=quantize_s, unit="s",
                         higher_is_better=False, **common))
    rows += [
        dict(metric="checkpoint_size_bytes", value=size, unit="bytes", higher_is_better=False,
             **common),
        dict(metric="weight_bytes", value=wbytes, unit="bytes", higher_is_better=False, **common),
        dict(metric="compression_ratio", value=ratio, unit="x", higher_is_better=True, **common),
    ]
    return rows


def _expected_kernels(scheme: Scheme) -> dict[str, Any]:
    ok, why = cpu_kernel_expected(scheme)
    return {"hopper_kernels": list(scheme.hopper_kernels), "cpu_kernel_expected": ok,
            "cpu_kernel_reason": why, "cpu_requires": scheme.cpu_requires}


def run_stage(cfg: StudyConfig, run: Run, *, raise_on_failure: bool = True) -> pd.DataFrame:
    """Quantize every variant of the study and write the stage's records.

    Finished variants (unit markers) are skipped and their records rebuilt from
    ``raw/quantize/<variant>.json``. A variant that fails becomes a ``failed`` record
    (error in ``note``) and the other variants still run.

    Args:
        cfg: the study.
        run: the run directory.
        raise_on_failure: raise :class:`StageError` after writing the records when any
            variant failed (set False to inspect the records first, then call
            ``notebook.check_stage``).

    Returns:
        tidy records (stage=quantize): quantize_time_s, checkpoint_size_bytes,
        weight_bytes, compression_ratio (base weight bytes / variant weight bytes).

    Raises:
        StageError: one or more variants failed (records are written first).
    """
    from tqdm.auto import tqdm

    from evalkit.assets.models import resolve_model
    from evalkit.core.run import set_cpu_threads

    if cfg.engine.device == "cpu":
        set_cpu_threads(run, "quantize")

    resolved = resolve_model(cfg.model)
    base_path = Path(resolved.path)
    if resolved.weights_real:
        base_modules = target_linear_modules(base_path, cfg.quantize.ignore)
        base_wbytes = weight_bytes(base_path, base_modules)
    else:
        base_wbytes = float("nan")
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    raw_dir = run.path / "raw" / STAGE
    # A device that cannot be honoured is a study-wide mistake: fail before any work.
    device = resolve_device(cfg.quantize) if resolved.weights_real else "cpu"

    for variant in tqdm(cfg.variants, desc="quantize", unit="variant"):
        scheme = SCHEMES[variant.scheme]
        raw_path = raw_dir / f"{variant.name}.json"
        done = run.unit_done(STAGE, variant.name)
        if done is not None and json_exists(raw_path):
            if (Path(done["checkpoint"]) / "config.json").is_file():
                run.log(f"quantize: skipped {variant.name} (done)")
                rows += read_json(raw_path)["records"]
                continue
            # A run resumed on another host, or after the cache was cleared: the checkpoint
            # is rebuilt under the same key (same recipe), not silently taken as done.
            run.log(f"quantize: {variant.name} was done but its checkpoint "
                    f"{done['checkpoint']} is gone; building it again")
        if scheme.is_base:
            note = "; ".join(resolved.caveats) if resolved.caveats else ""
            r = _metric_rows(variant, quantize_s=None, size=float(dir_size_bytes(base_path)),
                             wbytes=base_wbytes, base_wbytes=base_wbytes, note=note)
            _finish(run, raw_path, variant, r, {
                "checkpoint": str(base_path), "key": None, "scheme": scheme.name,
                "method": variant.method, "load_format": resolved.load_format,
            }, extra={"weights_real": resolved.weights_real, **_expected_kernels(scheme)})
            rows += r
            run.log(f"quantize: {variant.name} = base checkpoint {base_path}")
            continue
        run.log(f"quantize: {variant.name} ({scheme.label}, {variant.method}) ...")
        try:
            ck = quantize_variant(resolved, variant, cfg.quantize)
        except Exception as exc:  # noqa: BLE001 -- a failed variant is data; others go on
            msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
            failures.append(f"{variant.name}: {msg}")
            run.log(f"quantize: {variant.name} FAILED: {msg}")
            fr = [dict(variant=variant.name, scheme=variant.scheme, method=variant.method,
                       stage=STAGE, metric="quantize_time_s", stat="value", value=float("nan"),
                       unit="s", higher_is_better=False, status="failed", note=msg)]
            atomic_write_json(raw_path, {"variant": variant.name, "status": "failed",
                                         "error": msg, "traceback": traceback.format_exc(),
                                         "records": fr})
            rows += fr
            continue
        meta = read_json(ck.path / METADATA_FILE)
        note_parts = []
        if ck.cached:
            note_parts.append(f"checkpoint reused from cache (built {meta.get('created_utc')})")
        if not resolved.weights_real:
            note_parts.append("architecture preset: config only, no weights (load_format=dummy)")
        r = _metric_rows(variant, quantize_s=ck.quantize_s, size=float(ck.size_bytes),
                         wbytes=ck.weight_bytes, base_wbytes=base_wbytes,
                         note="; ".join(note_parts))
        for row in r:
            row["hardware"] = meta.get("hardware") or hardware_label(device)
        _finish(run, raw_path, variant, r, {
            "checkpoint": str(ck.path), "key": ck.key, "scheme": scheme.name,
            "method": variant.method, "cached": ck.cached,
            "load_format": None if resolved.weights_real else "dummy",
        }, extra={"quantization_config": ck.quantization_config, "metadata": meta,
                  "wall_s": ck.wall_s, **_expected_kernels(scheme)})
        rows += r
        run.log(f"quantize: {variant.name} -> {ck.path.name} "
                f"({'cached' if ck.cached else f'{ck.quantize_s:.1f} s'})")

    df = make_records(rows, run_id=run.run_id, study=cfg.study, model=resolved.name,
                      backend=BACKEND, hardware=hardware_label(device))
    run.write_stage_records(STAGE, df)
    if failures and raise_on_failure:
        raise StageError(f"quantize: {len(failures)} variant(s) failed: " + "; ".join(failures))
    return df


def _finish(run: Run, raw_path: Path, variant: Variant, rows: list[dict[str, Any]],
            unit: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the variant's raw JSON, then its unit marker (marker last: resume trusts it)."""
    atomic_write_json(raw_path, {"variant": variant.name, "status": "ok", "records": rows,
                                 **unit, **extra})
    run.mark_unit(STAGE, variant.name, unit)


# --------------------------------------------------------------------------------------
# for later stages


def checkpoint_for(run: Run, variant_name: str) -> Path:
    """The checkpoint directory of a variant in a run (base: the resolved model path).

    Raises:
        RunDirError: the quantize stage has not finished this variant in this run.
        AssetError: the recorded checkpoint directory no longer exists.
    """
    done = run.unit_done(STAGE, variant_name)
    if done is None:
        cfg = run.config()
        variant = cfg.variant(variant_name)
        if not SCHEMES[variant.scheme].is_base:
            raise RunDirError(
                f"{run.path}: variant {variant_name} has no checkpoint (quantize stage not run "
                "or failed for it); run 01_quantize first"
            )
        from evalkit.assets.models import resolve_model

        return Path(resolve_model(cfg.model).path)
    path = Path(done["checkpoint"])
    if not (path / "config.json").is_file():
        raise AssetError(
            f"{path}: checkpoint of variant {variant_name} is gone (cache cleared?); "
            "rerun 01_quantize with a new run"
        )
    return path


def checkpoints(run: Run) -> dict[str, Path]:
    """Variant name -> checkpoint directory, for the variants that have one.

    Variants whose quantization failed or has not run are absent; call
    :func:`checkpoint_for` for a clear error about one of them.
    """
    out: dict[str, Path] = {}
    for v in run.config().variants:
        try:
            out[v.name] = checkpoint_for(run, v.name)
        except RunDirError:
            continue
    return out

