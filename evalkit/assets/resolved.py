"""What resolving a model gives (:class:`ResolvedModel`), the provenance file of a built
checkpoint and the cached file digests."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.core.cache import cache_dir
from evalkit.core.io import atomic_write_json, file_lock, read_json, sha256_file

#: Provenance file written inside every checkpoint directory evalkit builds.
ASSET_FILE = "evalkit_asset.json"
#: Bump when the conversion output changes, so stale cached checkpoints are rebuilt.
CONVERTER_VERSION = 3
#: dtype of dequantized checkpoints. Gemma 3 and SmolLM2 were trained and released in
#: bfloat16; float16 overflows Gemma's activations, and float32 doubles the size for no
#: gain over weights that were 4-bit to begin with (bf16 rounding, <= 2**-9 relative, is far
#: below the Q4 step).
CHECKPOINT_DTYPE = "bfloat16"

# --------------------------------------------------------------------------------------
# resolved models


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for the engines.

    Attributes:
        name: short model name for records (``gemma3-270m``, a directory or hub id stem).
        path: local checkpoint directory (as a string, which every engine accepts); for
            ``source=hub`` the hub id itself.
        source: the study's ``model.source``.
        weights_real: False for presets (random weights).
        load_format: ``"dummy"`` for presets, else None (the engine's default).
        caveats: sentences every report using this model must carry.
        provenance: where the weights came from (package and version, file SHA-256, config hash).
    """

    name: str
    path: str
    source: str
    weights_real: bool
    load_format: str | None
    caveats: tuple[str, ...]
    provenance: dict[str, Any]


def sha256_index() -> tuple[Path, dict[str, str]]:
    """The checksum index (path, contents); a damaged index reads as empty (a re-hash)."""
    index_path = cache_dir() / "models" / "sha256-index.json"
    try:
        return index_path, (read_json(index_path) if index_path.is_file() else {})
    except (OSError, ValueError):
        return index_path, {}


def sha256_index_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_sha256_cached(path: Path) -> str:
    """SHA-256 of a large file, remembered by (path, size, mtime) so a cache hit is instant."""
    key = sha256_index_key(path)
    index_path, index = sha256_index()
    if key in index:
        return str(index[key])
    digest = sha256_file(path)
    with file_lock(index_path.with_suffix(".lock"), what="checksum index", blocking=True):
        fresh = read_json(index_path) if index_path.is_file() else {}
        fresh[key] = digest
        atomic_write_json(index_path, fresh)
    return digest


def json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def say_progress(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


