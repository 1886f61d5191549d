"""Building one variant's checkpoint: llm-compressor ``oneshot`` on real weights, a
config-only checkpoint for architecture presets; reused when its key exists."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evalkit.assets.models import ResolvedModel
from evalkit.core.environment import hardware_label
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.io import atomic_dir, atomic_write_json, file_lock, read_json
from evalkit.core.schemes import SCHEMES
from evalkit.core.specs import QuantizeSpec, Variant
from evalkit.stages.quantize.checkpoints import (
    CALIBRATED_METHODS,
    METADATA_FILE,
    SMOOTHING_CHECK_SEQUENCES,
    SMOOTHING_TOLERANCE,
    WEIGHT_INDEXES,
    WEIGHT_SUFFIXES,
    QuantizedCheckpoint,
    checkpoint_key,
    checkpoint_name,
    checkpoint_root,
    dir_size_bytes,
    key_material,
    library_versions,
    meta_model,
    target_linear_modules,
    uses_smoothquant,
    weight_bytes,
)
from evalkit.stages.quantize.recipes import (
    build_recipe,
    build_scheme,
    calibration_dataset,
    no_accelerator,
    resolve_device,
)

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
    meta = meta_model(src)
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
    upcast = (variant.method in CALIBRATED_METHODS and no_accelerator()
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
        ds, cal_info = calibration_dataset(tokenizer, qspec.calibration)
        kwargs = dict(dataset=ds, max_seq_length=qspec.calibration.seq_len,
                      num_calibration_samples=qspec.calibration.num_samples,
                      shuffle_calibration_samples=False)
    torch.manual_seed(0)
    t1 = time.perf_counter()
    smoothing = None
    if uses_smoothquant(variant, qspec):
        smoothing = _smooth_checked(lm, recipe[0], kwargs, variant)
        recipe_rest = recipe[1:]
    else:
        recipe_rest = recipe
    oneshot(model=lm, recipe=recipe_rest, **kwargs)
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
        "recipe": [type(modifier).__name__ for modifier in recipe],
        "calibration": cal_info,
        **({"smoothing_check": smoothing} if smoothing else {}),
        "load_s": t_load, "oneshot_s": t_oneshot, "save_s": t_save,
    }


def _calibration_loss(lm: Any, ds: Any) -> float:
    """Mean next-token loss (nats per token) of the first calibration sequences."""
    import torch
    from compressed_tensors.offload import dispatch_model

    lm = dispatch_model(lm)  # onto the accelerator where there is one, as for generation
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in ds["input_ids"][:SMOOTHING_CHECK_SEQUENCES]:
            x = torch.tensor([ids], device=lm.device)
            n = len(ids) - 1
            total += float(lm(input_ids=x, labels=x).loss) * n
            count += n
    return total / count


def _smooth_checked(lm: Any, smooth: Any, kwargs: dict[str, Any], variant: Variant,
                    ) -> dict[str, Any]:
    """Run the SmoothQuant step alone and check it left the model's function unchanged.

    Raises:
        ConfigError: the calibration loss moved by more than ``SMOOTHING_TOLERANCE`` (the
            library's smoothing mappings do not fit this architecture); nothing is written.
    """
    from llmcompressor import oneshot

    before = _calibration_loss(lm, kwargs["dataset"])
    oneshot(model=lm, recipe=[smooth], **kwargs)
    after = _calibration_loss(lm, kwargs["dataset"])
    change = abs(after - before) / max(before, 1e-9)
    check = {"sequences": SMOOTHING_CHECK_SEQUENCES, "loss_before": before,
             "loss_after": after, "relative_change": change, "tolerance": SMOOTHING_TOLERANCE}
    if not change <= SMOOTHING_TOLERANCE:  # also catches a NaN loss
        arch = ", ".join(getattr(lm.config, "architectures", None) or ["this architecture"])
        raise ConfigError(
            f"variant {variant.name}: SmoothQuant changed what the model computes "
            f"({arch}, llm-compressor {library_versions()['llmcompressor']}): the loss of "
            f"{SMOOTHING_CHECK_SEQUENCES} calibration passages went from {before:.3f} to "
            f"{after:.3g} nats per token, where smoothing alone must leave it unchanged "
            f"(within {SMOOTHING_TOLERANCE:.0%}); its smoothing mappings do not fit this "
            "model and no checkpoint was written. Allowed: quantize.smoothquant: false "
            "(GPTQ alone), or method rtn")
    return check


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
    if variant.method == "awq" and no_accelerator():
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
                    "settings": key_material(model, variant, qspec),
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


