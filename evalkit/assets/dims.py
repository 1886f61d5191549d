"""Linear layer shapes of a model (for weight bytes and the roofline floors), read from its
config without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.assets.packaged import PACKAGED_MODELS
from evalkit.assets.presets import list_presets, preset_config
from evalkit.assets.resolved import CONVERTER_VERSION, sha256_index, sha256_index_key
from evalkit.core.cache import cache_dir
from evalkit.core.io import read_json
from evalkit.core.specs import ModelSpec
from evalkit.metrics.roofline import text_config


def linear_dims(spec: ModelSpec) -> list[int] | None:
    """Input dims of the model's Linear layers, without loading weights.

    The dims are hidden_size, intermediate_size (and moe_intermediate_size) and
    num_attention_heads x head_dim (the attention output projection's input), from the
    packaged model's known dims or :func:`model_config`; None where no config is at hand
    without work (a GGUF not converted yet, a hub model never downloaded).
    """
    if spec.source == "packaged" and spec.name in PACKAGED_MODELS:
        return list(PACKAGED_MODELS[str(spec.name)].linear_dims)
    config = model_config(spec)
    return dims_from_config(config) if config is not None else None


def model_config(spec: ModelSpec) -> dict[str, Any] | None:
    """The model's config.json as a dict, without loading weights or converting anything.

    Read from the preset file, ``<hf_dir>/config.json``, the checkpoint a ``.gguf`` file was
    already converted into (by its checksum, when that is remembered), or a hub model's
    ``config.json`` in the local Hugging Face cache; None otherwise (a packaged model, a
    GGUF not converted yet, a hub model never downloaded, an unreadable file).
    """
    if spec.source == "preset" and spec.name in list_presets():
        return preset_config(str(spec.name))
    cfg: Path | None = None
    if spec.source == "hf_dir" and spec.path is not None:
        cfg = Path(spec.path) / "config.json"
    elif spec.source == "gguf" and spec.path is not None and Path(spec.path).is_file():
        cfg = _converted_gguf_config(Path(spec.path))
    elif spec.source == "hub" and spec.repo_id:
        cfg = _hub_cached_config(spec.repo_id, spec.revision)
    if cfg is not None and cfg.is_file():
        try:
            data = read_json(cfg)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    return None


def _converted_gguf_config(path: Path) -> Path | None:
    """config.json of the checkpoint ``path`` was converted into, if its checksum is known
    (never hashes the file: validation must stay fast)."""
    digest = sha256_index()[1].get(sha256_index_key(path))
    return gguf_checkpoint_dir(path, digest) / "config.json" if digest else None


def gguf_checkpoint_dir(path: Path, digest: str) -> Path:
    """Where the GGUF file ``path`` (of checksum ``digest``) is converted into."""
    return cache_dir() / "models" / "gguf" / f"{path.stem}-{digest[:12]}-c{CONVERTER_VERSION}"


def _hub_cached_config(repo_id: str, revision: str | None) -> Path | None:
    """A hub model's config.json from the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 -- a malformed id or cache is not this check's to report
        return None
    return Path(found) if isinstance(found, str) else None


def dims_from_config(config: dict[str, Any]) -> list[int] | None:
    """Linear input dims from a Hugging Face config dict (text sub-config where nested)."""
    cfg = text_config(config)
    hidden = cfg.get("hidden_size")
    if not hidden:
        return None
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads else None)
    dims = [hidden]
    for key in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if cfg.get(key):
            dims.append(int(cfg[key]))
    if heads and head_dim:
        dims.append(int(heads) * int(head_dim))
    return sorted(set(int(d) for d in dims))


