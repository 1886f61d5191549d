"""evalkit's cache root (converted models, checkpoints, the task pack, accuracy results)."""

from __future__ import annotations

import os
from pathlib import Path

from evalkit.core.errors import AssetError


def cache_dir() -> Path:
    """Engine cache root: ``$EVALKIT_CACHE``, default ``~/.cache/evalkit``; created on demand."""
    root = Path(os.environ.get("EVALKIT_CACHE") or Path.home() / ".cache" / "evalkit")
    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"cache directory {root} cannot be created ({exc.strerror or exc}); "
                         "set EVALKIT_CACHE to a writable directory") from None
    return root


def make_readable(root: Path) -> None:
    """Open a finished cache entry to other users (temporary dirs and files start 0700/0600)."""
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
