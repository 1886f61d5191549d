"""Atomic file writes and advisory locks.

A completed result is written to a temporary file in the same directory, flushed and
fsynced, then renamed over its final name: a reader sees the old file or the new one,
never a truncated one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evalkit.core.errors import RunDirError


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise RunDirError(f"{p}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunDirError(f"{p}: cannot write ({exc.strerror or exc})") from None
        raise
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; where ``path`` is gone but ``path.gz`` exists (an archived run,
    see :mod:`evalkit.core.archive`), read the compressed copy."""
    p = Path(path)
    if not p.exists() and p.with_name(p.name + ".gz").is_file():
        import gzip

        with gzip.open(p.with_name(p.name + ".gz"), "rt", encoding="utf-8") as fh:
            return json.load(fh)
    with open(p, encoding="utf-8") as fh:
        return json.load(fh)


def json_exists(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` or its archived ``path.gz`` copy exists."""
    p = Path(path)
    return p.is_file() or p.with_name(p.name + ".gz").is_file()


@contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place on success.

    The final directory must not exist; on any error the partial directory is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lock_holder(path: str | os.PathLike[str]) -> str | None:
    """Who holds the :func:`file_lock` on ``path`` (its recorded pid), or None when nobody
    does. Creates and writes nothing: a missing lock file is a free lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read the lock ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Path(path).read_text(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: str | os.PathLike[str], *, what: str, blocking: bool = False) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (flock; released when the process dies).

    Raises:
        RunDirError: the lock is held by another process and ``blocking`` is False, or the
            lock file cannot be created or written (read-only or full disk).
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"{what}: cannot write its lock {p} ({exc.strerror or exc}); the "
                          "directory is read-only, full or not ours") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = Path(p).read_text(errors="replace").strip() or "another process"
            raise RunDirError(f"{what} is in use by {holder} (lock {p})") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        except OSError as exc:
            raise RunDirError(f"{what}: cannot write its lock {p} ({exc.strerror or exc}); "
                              "the disk is full or read-only") from None
        yield p
    finally:
        os.close(fd)
