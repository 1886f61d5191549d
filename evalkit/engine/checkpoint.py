"""Checks of a checkpoint directory before an engine is started on it."""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.core.errors import CheckpointError


def describe_checkpoint(model_path: str | Path) -> str:
    """Short description of a checkpoint's quantization, from its config.json."""
    cfg_file = Path(model_path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"checkpoint {model_path}"
    q = cfg.get("quantization_config")
    if not q:
        return f"unquantized checkpoint {Path(model_path).name}"
    method, fmt = q.get("quant_method", "quantized"), q.get("format", "?")
    return f"{method} ({fmt}) checkpoint {Path(model_path).name}"


#: Largest safetensors header accepted (the format's own limit is 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000


def _check_safetensors(path: Path) -> None:
    """Header and size of one ``.safetensors`` file: 8-byte little-endian header length,
    a JSON header whose tensors' ``data_offsets`` end exactly at the end of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > min(_MAX_SAFETENSORS_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    ends = [int(t["data_offsets"][1]) for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    if size != 8 + n + max(ends, default=0):
        raise CheckpointError(
            f"{path}: truncated or corrupt ({size} bytes on disk, the header describes "
            f"{8 + n + max(ends, default=0)})")


def check_checkpoint(model_path: str | Path, *, weights: bool = True) -> None:
    """Check a checkpoint directory before an engine is started on it (seconds, not minutes).

    ``config.json`` must parse; with ``weights``, the weight files must be there:
    ``model.safetensors`` or every shard named in ``model.safetensors.index.json`` (each
    with a readable header and the size it describes), or PyTorch ``.bin`` files.

    Raises:
        CheckpointError: what is missing or corrupt, naming the file.
    """
    d = Path(model_path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    try:
        json.loads((d / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise CheckpointError(f"{d}: no config.json (not a checkpoint directory)") from None
    except ValueError as exc:
        raise CheckpointError(f"{d / 'config.json'}: corrupt JSON ({exc})") from None
    if not weights:
        return
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise CheckpointError(f"{index}: corrupt shard index") from None
        files = [d / s for s in shards]
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files:
        if any(f.stat().st_size > 0 for f in d.glob("*.bin")):
            return  # PyTorch pickles: no cheap structural check; the engine reads them
        raise CheckpointError(f"{d}: no weight files (*.safetensors or *.bin)")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weight shard named in the index is missing")
        _check_safetensors(f)
