"""Slim a finished run directory for committing: compress what its readers read compressed,
drop what is a copy of something kept.

A committed run keeps what regenerates its numbers and what shows them: ``config.yaml``,
``env.json``, ``status.json``, the records, ``units/``, the raw per-document and
per-request data, the executed notebooks (papermill's provenance) and the stakeholder
report ``html/04_report.html``. :func:`archive_run` changes, in place:

* every ``raw/**/*.json`` over :data:`GZIP_MIN_BYTES` -- mostly vLLM's per-request benchmark
  data -- becomes ``<name>.json.gz``, except the files read by exact name
  (``*.summary.json``, ``provenance.json``, ``offline.json``, anything under a ``units/``
  directory);
  :func:`evalkit.core.io.read_json` and :func:`evalkit.core.io.json_exists` accept either form;
* the engine and stage logs (``logs/*.log``) and any other ``*.log`` over
  :data:`GZIP_MIN_BYTES` become ``<name>.log.gz`` (``zcat`` reads them);
* the prompt files of request mixes (``raw/latency/<variant>/<point>_t<k>.prompts.jsonl``)
  are deleted after their SHA-256 is recorded in the point's ``<point>.summary.json``
  (``prompts``): evalkit writes them from the study's seed, the tokenizer and the task pack,
  so a regeneration is checked against the digest instead of keeping megabytes of text;
* ``run.lock`` and the write locks under ``locks/`` are deleted, and so are ``report.html``
  at the run root where it is a byte copy of ``html/04_report.html``, every
  ``html/*.code.html`` (the executed notebooks hold the code) and the other stages'
  ``html/NN_stage.html`` whose executed ``notebooks/NN_stage.ipynb`` is kept.

Each file is replaced atomically: the ``.gz`` is written under a temporary name and
renamed into place before the original is removed, so an interrupted archive leaves both
copies (readers take the original) and the next call finishes the job. Archiving an
archived run changes nothing. A run resumed after archiving writes plain files again;
archiving it once more folds them in (a log's new lines are appended to its ``.gz``).
"""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import os
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from evalkit.core.errors import ArchiveError, RunDirError
from evalkit.core.io import (
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    json_exists,
    lock_holder,
    read_json,
)
from evalkit.core.run import REPORT_HTML
from evalkit.core.units import LOCKS_DIR

#: Raw JSON and stray logs at or below this size stay as they are (readers open some of
#: them by name without the .gz fallback, and gzip gains little on a few KiB).
GZIP_MIN_BYTES = 64 * 1024

#: Raw JSON files that readers open by exact name, testing for the plain file: never
#: compressed (``offline.json``: the latency stage's rebuild and per-request samples).
KEEP_JSON_NAMES = ("provenance.json", "offline.json")
KEEP_JSON_SUFFIXES = (".summary.json",)

LOCK_NAME = "run.lock"


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`archive_run` did to one run directory (with ``dry_run``: would do).

    Attributes:
        path: the run directory (resolved).
        bytes_before: total size of the files in it before, in bytes.
        bytes_after: total size after, in bytes (with ``dry_run``: what it would be).
        removed: files deleted, relative to ``path`` (duplicates, ``run.lock``).
        compressed: files replaced by ``<name>.gz``, relative to ``path``.
        dry_run: True when nothing was changed.
    """

    path: Path
    bytes_before: int
    bytes_after: int
    removed: tuple[str, ...]
    compressed: tuple[str, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        """True when the call changed (or, dry, would change) anything."""
        return bool(self.removed or self.compressed)


def archive_run(path: str | os.PathLike[str], *, dry_run: bool = False) -> ArchiveResult:
    """Slim one finished run directory in place (see the module docstring for what changes).

    Args:
        path: the run directory, ``OUTPUT_ROOT/STUDY/RUN_ID``.
        dry_run: only work out what would change (and the size after); change nothing.

    Returns:
        The sizes before and after and the files removed and compressed.

    Raises:
        ArchiveError: ``path`` is not a run directory, another process holds its run lock,
            its ``status.json`` says a stage is still running, or a file cannot be read or
            written.
    """
    given = Path(path)
    if not (given / "config.yaml").is_file():
        raise ArchiveError(f"{given}: not a run directory (no config.yaml); "
                           "archive takes OUTPUT_ROOT/STUDY/RUN_ID")
    run = given.resolve()
    lock = run / LOCK_NAME
    had_lock = lock.is_file()
    before = tree_bytes(run)
    with ExitStack() as stack:
        if dry_run:
            holder = lock_holder(lock)
            if holder is not None:
                raise ArchiveError(f"cannot archive {run}: run {run.name} is in use by {holder} "
                                   f"(lock {lock})")
        else:
            try:
                stack.enter_context(file_lock(lock, what=f"run {run.name}"))
            except RunDirError as exc:
                raise ArchiveError(f"cannot archive {run}: {exc}") from None
        _check_finished(run)
        removed: list[str] = []
        compressed: list[str] = []
        delta = 0  # bytes after - bytes before
        for duplicate in _duplicates(run):
            delta -= duplicate.stat().st_size
            removed.append(duplicate.relative_to(run).as_posix())
            if not dry_run:
                _unlink(duplicate)
        for write_lock in sorted((run / LOCKS_DIR).glob("*.lock")):
            delta -= write_lock.stat().st_size
            removed.append(write_lock.relative_to(run).as_posix())
            if not dry_run:
                _unlink(write_lock)
        if not dry_run and (run / LOCKS_DIR).is_dir() and not any((run / LOCKS_DIR).iterdir()):
            (run / LOCKS_DIR).rmdir()
        for prompts_file in sorted((run / "raw").rglob(f"*{PROMPTS_SUFFIX}*")):
            if not prompts_file.name.endswith((PROMPTS_SUFFIX, PROMPTS_SUFFIX + ".gz")):
                continue
            delta -= prompts_file.stat().st_size
            removed.append(prompts_file.relative_to(run).as_posix())
            if not dry_run:
                _record_prompt_digest(prompts_file)
                _unlink(prompts_file)
        for to_compress, log in _compressible(run):
            gz = _gz(to_compress)
            payload = _payload(to_compress, log=log)
            old_gz = gz.stat().st_size if gz.is_file() else 0
            new_gz = old_gz if payload is None else len(payload)
            delta += new_gz - old_gz - to_compress.stat().st_size
            compressed.append(to_compress.relative_to(run).as_posix())
            if not dry_run:
                if payload is not None:
                    atomic_write_bytes(gz, payload)
                _unlink(to_compress)
        if had_lock:
            removed.append(LOCK_NAME)
        if dry_run:
            delta -= lock.stat().st_size if had_lock else 0
        else:
            # removed while still held: no other process can take it between the last
            # change above and its removal
            _unlink(lock)
    after = before + delta if dry_run else tree_bytes(run)
    return ArchiveResult(path=run, bytes_before=before, bytes_after=after,
                         removed=tuple(sorted(removed)), compressed=tuple(compressed),
                         dry_run=dry_run)


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """Total size in bytes of the regular files under ``path`` (symlinks not followed)."""
    return sum(f.lstat().st_size for f in Path(path).rglob("*")
               if f.is_file() and not f.is_symlink())


def _check_finished(run: Path) -> None:
    p = run / "status.json"
    if not p.is_file():
        return
    try:
        status = read_json(p)
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot archive {run}: status.json is unreadable ({exc})") from None
    stages = status.get("stages") if isinstance(status, dict) else None
    running = [name for name, st in (stages or {}).items()
               if isinstance(st, dict) and st.get("state") == "running"]
    if running:
        raise ArchiveError(
            f"cannot archive {run}: status.json says stage(s) {', '.join(running)} still "
            "running; archive a finished run (one whose process died: resume it first)")


def _duplicates(run: Path) -> list[Path]:
    """Files that only repeat what the run keeps elsewhere."""
    kept_report = run / REPORT_HTML
    html = kept_report.parent
    out = []
    root_report = run / "report.html"
    if (_plain_file(root_report) and _plain_file(kept_report)
            and filecmp.cmp(root_report, kept_report, shallow=False)):
        out.append(root_report)
    for f in sorted(html.glob("*.html")):
        if not _plain_file(f):
            continue
        if f.name.endswith(".code.html"):
            out.append(f)
        elif f != kept_report and (run / "notebooks" / f"{f.stem}.ipynb").is_file():
            out.append(f)
    return out


#: Name ending of a request mix's prompt file (vLLM's custom dataset), one per point trial.
PROMPTS_SUFFIX = ".prompts.jsonl"


def _record_prompt_digest(f: Path) -> None:
    """Write ``f``'s SHA-256 (of its text) into its point's summary before ``f`` goes."""
    try:
        data = f.read_bytes()
        if f.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{f}: cannot read ({exc})") from None
    name = f.name.removesuffix(".gz")
    stem = name.removesuffix(PROMPTS_SUFFIX).rsplit("_t", 1)[0]
    summary = f.with_name(f"{stem}.summary.json")
    doc = read_json(summary) if json_exists(summary) else {}
    digests = dict(doc.get("prompts") or {})
    digest = hashlib.sha256(data).hexdigest()
    if digests.get(name, {}).get("sha256") == digest:
        return
    digests[name] = {"sha256": digest, "requests": data.count(b"\n"),
                     "note": "prompt file removed by evalkit archive; evalkit writes it again "
                             "from the study's seed, tokenizer and task pack"}
    doc["prompts"] = digests
    atomic_write_json(summary, doc)


def _compressible(run: Path) -> list[tuple[Path, bool]]:
    """(file, is a log) for every file to replace by its ``.gz``."""
    out: list[tuple[Path, bool]] = []
    for f in sorted((run / "raw").rglob("*.json")):
        rel = f.relative_to(run)
        if (not _plain_file(f) or "units" in rel.parts or f.name in KEEP_JSON_NAMES
                or f.name.endswith(KEEP_JSON_SUFFIXES)):
            continue
        # a .gz beside the file: a resumed run wrote it again (or an archive was cut off)
        if f.stat().st_size > GZIP_MIN_BYTES or _gz(f).is_file():
            out.append((f, False))
    logs = run / "logs"
    for f in sorted(run.rglob("*.log")):
        if _plain_file(f) and (f.parent == logs or f.stat().st_size > GZIP_MIN_BYTES
                               or _gz(f).is_file()):
            out.append((f, True))
    return out


def _payload(f: Path, *, log: bool) -> bytes | None:
    """The bytes ``f.gz`` must hold after archiving ``f``; None when it holds them already.

    Where ``f.gz`` exists too, ``f`` is the newer copy: a JSON file replaces it; a log's
    lines are appended to it as a further gzip member (``zcat`` reads the members as one
    text), unless the ``.gz`` already ends with them (an archive cut off after the rename).
    """
    gz = _gz(f)
    try:
        data = f.read_bytes()
        old = gz.read_bytes() if gz.is_file() else None
    except OSError as exc:
        raise ArchiveError(f"{f}: cannot read ({exc.strerror or exc})") from None
    fresh = gzip.compress(data, compresslevel=9, mtime=0)
    if old is None:
        return fresh
    try:
        text = gzip.decompress(old)
    except (OSError, EOFError, zlib.error):
        if log:
            raise ArchiveError(f"{gz}: not a readable gzip file; {f.name} cannot be appended "
                               "to it (move one of them aside)") from None
        return fresh
    if (text.endswith(data) if log else text == data):
        return None
    return old + fresh if log else fresh


def _unlink(f: Path) -> None:
    try:
        f.unlink(missing_ok=True)
    except OSError as exc:
        raise ArchiveError(f"{f}: cannot remove ({exc.strerror or exc}); the run is "
                           "half archived, which its readers accept -- archive it again") from None


def _gz(f: Path) -> Path:
    return f.with_name(f.name + ".gz")


def _plain_file(f: Path) -> bool:
    return f.is_file() and not f.is_symlink()
