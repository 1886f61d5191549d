"""Packaged models and model resolution: a study's ``model`` section becomes a checkpoint
directory vLLM, lm-eval and llm-compressor can load."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from evalkit.assets.dims import dims_from_config, gguf_checkpoint_dir, linear_dims, model_config
from evalkit.assets.gguf import checkpoint_from_gguf, convert_gguf, gguf_metadata, gguf_quant_type
from evalkit.assets.packaged import PACKAGED_MODELS, PackagedModel, gguf_baseline_caveat
from evalkit.assets.presets import (
    PRESET_CAVEAT,
    PRESET_TOKENIZER_CAVEAT,
    PRESET_TOKENIZER_ENV,
    PRESETS_DIR,
    list_presets,
    preset_config,
    preset_tokenizer_dir,
    resolve_preset,
)
from evalkit.assets.resolved import (
    ASSET_FILE,
    CHECKPOINT_DTYPE,
    CONVERTER_VERSION,
    ResolvedModel,
    file_sha256_cached,
    say_progress,
)
from evalkit.core.cache import cache_dir
from evalkit.core.errors import ConfigError
from evalkit.core.io import read_json, sha256_file
from evalkit.core.specs import ModelSpec

#: the assets API (the other modules of the package are its parts)
__all__ = [
    "ASSET_FILE",
    "CHECKPOINT_DTYPE",
    "CONVERTER_VERSION",
    "PACKAGED_MODELS",
    "PRESETS_DIR",
    "PRESET_CAVEAT",
    "PRESET_TOKENIZER_CAVEAT",
    "PRESET_TOKENIZER_ENV",
    "PackagedModel",
    "ResolvedModel",
    "convert_gguf",
    "dims_from_config",
    "gguf_metadata",
    "linear_dims",
    "list_presets",
    "model_config",
    "prepare",
    "preset_config",
    "preset_tokenizer_dir",
    "resolve_model",
]


def _resolve_packaged(name: str, *, progress: bool) -> ResolvedModel:
    if name not in PACKAGED_MODELS:
        raise ConfigError(f"model.name: unknown packaged model '{name}'; allowed: "
                          f"{', '.join(PACKAGED_MODELS)}")
    pm = PACKAGED_MODELS[name]
    version = pm.installed_version()
    final = cache_dir() / "models" / name / f"{pm.distribution}-{version}-c{CONVERTER_VERSION}"
    if (final / ASSET_FILE).is_file():
        record = read_json(final / ASSET_FILE)
    else:
        gguf = pm.gguf_path()
        prov = {"source": "packaged", "package": pm.distribution, "version": version,
                "requirements": list(pm.requirements), "gguf_file": gguf.name,
                "gguf_sha256": sha256_file(gguf), "gguf_quant": pm.gguf_quant,
                "licence": pm.licence}
        _, record = checkpoint_from_gguf(gguf, final, prov, progress=progress)
    prov = {k: record[k] for k in ("package", "version", "gguf_file", "gguf_sha256",
                                   "gguf_quant", "licence") if k in record}
    # The converter version is part of provenance so checkpoints derived from an older
    # conversion (cached by content key downstream) are not reused.
    prov["checkpoint_dtype"] = record.get("conversion", {}).get("dtype")
    prov["converter_version"] = record.get("conversion", {}).get("converter_version")
    return ResolvedModel(name=name, path=str(final), source="packaged", weights_real=True,
                         load_format=None, caveats=(pm.caveat,), provenance=prov)


def _resolve_gguf(path: Path, *, progress: bool) -> ResolvedModel:
    if not (path.is_file() and path.suffix == ".gguf"):
        raise ConfigError(f"model.path: '{path}' is not an existing .gguf file")
    digest = file_sha256_cached(path)
    stem = path.stem
    final = gguf_checkpoint_dir(path, digest)
    if (final / ASSET_FILE).is_file():
        record = read_json(final / ASSET_FILE)
    else:
        quant = gguf_quant_type(path)
        prov = {"source": "gguf", "gguf_file": str(path.resolve()), "gguf_sha256": digest,
                "gguf_quant": quant}
        _, record = checkpoint_from_gguf(path, final, prov, progress=progress)
    quant = record.get("gguf_quant")
    caveats: tuple[str, ...] = ()
    if quant is None or not str(quant).upper().startswith(("F32", "F16", "BF16", "ALL_F32")):
        caveats = (f"the baseline is a dequantized GGUF ({quant or 'quantization unknown'}), so "
                   "quality deltas are measured against an already-quantized model",)
    prov = {k: record[k] for k in ("gguf_file", "gguf_sha256", "gguf_quant") if k in record}
    prov["converter_version"] = record.get("conversion", {}).get("converter_version")
    return ResolvedModel(name=stem, path=str(final), source="gguf", weights_real=True,
                         load_format=None, caveats=caveats, provenance=prov)


def _resolve_hf_dir(path: Path) -> ResolvedModel:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"model.path: '{path}' is not a checkpoint directory (no config.json)")
    prov: dict[str, Any] = {"source": "hf_dir", "path": str(path.resolve()),
                            "config_sha256": sha256_file(cfg)}
    caveats: tuple[str, ...] = ()
    if (path / ASSET_FILE).is_file():  # a directory evalkit converted earlier, copied here
        record = read_json(path / ASSET_FILE)
        prov["evalkit_asset"] = {k: record.get(k) for k in ("package", "version", "gguf_sha256",
                                                            "gguf_quant")}
        if record.get("gguf_quant"):
            caveats = (gguf_baseline_caveat(str(record["gguf_quant"])),)
    return ResolvedModel(name=path.resolve().name, path=str(path), source="hf_dir",
                         weights_real=True, load_format=None, caveats=caveats, provenance=prov)


def _resolve_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"model.source: hub model '{repo_id}' needs a reachable Hugging Face "
                          "hub, but HF_HUB_OFFLINE is set; allowed offline: source packaged, "
                          "gguf, hf_dir or preset")
    return ResolvedModel(name=repo_id.rsplit("/", 1)[-1], path=repo_id, source="hub",
                         weights_real=True, load_format=None,
                         caveats=("weights come from the hub at run time",),
                         provenance={"source": "hub", "repo_id": repo_id, "revision": revision})


# --------------------------------------------------------------------------------------
# public entry points


def _resolve(spec: ModelSpec, *, progress: bool) -> ResolvedModel:
    if spec.source == "packaged":
        return _resolve_packaged(str(spec.name), progress=progress)
    if spec.source == "gguf":
        return _resolve_gguf(Path(str(spec.path)).expanduser(), progress=progress)
    if spec.source == "hf_dir":
        return _resolve_hf_dir(Path(str(spec.path)).expanduser())
    if spec.source == "hub":
        return _resolve_hub(str(spec.repo_id), spec.revision)
    if spec.source == "preset":
        return resolve_preset(str(spec.name), progress=progress)
    raise ConfigError(f"model.source: unknown source '{spec.source}'; allowed: packaged, "
                      "gguf, hf_dir, hub, preset")


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Resolve a study's model to a local checkpoint, converting once into the cache.

    Raises:
        ConfigError: the spec names something that does not exist (unknown name, missing
            file, hub while offline).
        AssetError: a package is missing or a conversion failed.
    """
    return _resolve(spec, progress=False)


def prepare(spec: ModelSpec) -> ResolvedModel:
    """Like :func:`resolve_model`, printing progress to stderr (the setup step)."""
    t0 = time.perf_counter()
    m = _resolve(spec, progress=True)
    say_progress(True, f"{m.name}: ready at {m.path} ({time.perf_counter() - t0:.1f} s)")
    return m


