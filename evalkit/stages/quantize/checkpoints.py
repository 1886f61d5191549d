"""Quantized checkpoints: their keys and names in the cache, sizes and weight bytes (where a
run's variants have theirs is :mod:`evalkit.assets.checkpoints`)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from evalkit.assets.models import ResolvedModel
from evalkit.core.cache import cache_dir
from evalkit.core.schemes import SCHEMES
from evalkit.core.specs import QuantizeSpec, Variant

STAGE = "quantize"
BACKEND = "llm-compressor"
METADATA_FILE = "evalkit_quantize.json"
#: Bump when the way recipes are built changes, so old cached checkpoints are not reused.
RECIPE_VERSION = 2  # 2: calibrated methods run in float32 on CPUs
#: SmoothQuant strength before GPTQ for int8 activations (llm-compressor's W8A8 example).
SMOOTHQUANT_STRENGTH = 0.8
#: Smoothing only moves scale between a norm and the layers it feeds, so it must leave the
#: model's loss unchanged; relative change of the calibration loss tolerated (rounding of the
#: rescaled weights in the checkpoint's dtype).
SMOOTHING_TOLERANCE = 0.02
#: Calibration sequences the smoothing check scores before and after.
SMOOTHING_CHECK_SEQUENCES = 4
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


def key_material(model: ResolvedModel, variant: Variant, qspec: QuantizeSpec) -> dict[str, Any]:
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
        if uses_smoothquant(variant, qspec):
            material["smoothquant_strength"] = SMOOTHQUANT_STRENGTH
            # checkpoints smoothed before the check existed are not reused (some are broken)
            material["smoothing_tolerance"] = SMOOTHING_TOLERANCE
    return material


def uses_smoothquant(variant: Variant, qspec: QuantizeSpec) -> bool:
    """Whether the variant's recipe starts with SmoothQuant: GPTQ of w8a8_int8, unless the
    study turns it off (``quantize.smoothquant: false``)."""
    return variant.method == "gptq" and variant.scheme == "w8a8_int8" and qspec.smoothquant


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
    blob = json.dumps(key_material(model, variant, qspec), sort_keys=True, default=str)
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

    model = meta_model(Path(checkpoint))
    return {name for name, _ in match_named_modules(model, ["Linear"], list(ignore))}


def meta_model(checkpoint: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


# --------------------------------------------------------------------------------------
# for later stages
