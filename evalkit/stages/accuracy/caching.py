"""The cross-run cache of lm-eval results: keys over the checkpoint, the task pack and every
setting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit.core.cache import cache_dir


def checkpoint_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a checkpoint directory: resolved path, file names, sizes, mtimes."""
    p = Path(path).resolve()
    files = []
    for f in sorted(p.rglob("*")):
        if f.is_file():
            st = f.stat()
            files.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return {"path": str(p), "files": files}


def dir_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(material: Mapping[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def accuracy_cache_dir() -> Path:

    return Path(cache_dir()) / "accuracy"
