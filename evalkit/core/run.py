"""Run directories: ``OUTPUT_ROOT/STUDY/RUN_ID/``.

Layout::

    config.yaml          the resolved study (every default filled in)
    config.source.yaml   the file as the user wrote it
    env.json             Python, packages, CPU, GPU, git commit
    notebooks/           executed notebooks (NN_stage.ipynb)
    html/                rendered reports (NN_stage.html, NN_stage.code.html);
                         html/04_report.html is the stakeholder report
    report.html          a copy of html/04_report.html (local runs; see evalkit.core.archive)
    records/STAGE.parquet  per-stage records
    records/parts/VARIANT/STAGE.parquet  a cluster worker's records of its own variant
                         (evalkit.cluster; the run's stage records are assembled after)
    records.parquet      all stages, tidy long format
    raw/                 lm-eval results and samples, per-request latency data
    units/               one JSON marker per finished unit (resume skips these)
    logs/                engine and stage logs
    run.lock             held while a process works in the run (never committed)
    locks/               write locks of the files several workers change (status.json,
                         env.json, logs/run.log, records.parquet)

Run ids are unique (UTC time plus random suffix); an existing run is never overwritten,
only resumed by naming it explicitly.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from evalkit.core import records as rec
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.environment import PACKAGES, environment_info, free_cpu_cores, machine_info, package_version
from evalkit.core.errors import RunDirError
from evalkit.core.io import atomic_write_json, atomic_write_text, file_lock, read_json
from evalkit.core.units import LOCKS_DIR, UnitStore

if TYPE_CHECKING:
    import pandas as pd

#: The stakeholder report, relative to the run directory (notebook 04 rendered without code).
REPORT_HTML = "html/04_report.html"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass(frozen=True)
class Run:
    """An opened run directory.

    ``scope``: the variants a cluster worker (:mod:`evalkit.cluster`) works on; its stage
    records go to ``records/parts/`` and leave the run's stage records and
    ``records.parquet`` to the pass that joins all variants. None: the whole run.
    """

    path: Path
    scope: tuple[str, ...] | None = None

    def scoped(self, variants: tuple[str, ...] | list[str] | None) -> Run:
        """This run restricted to ``variants`` (None: the whole run)."""
        return Run(self.path, tuple(variants) if variants else None)

    def lock(self, name: str) -> AbstractContextManager[Path]:
        """Hold the run's write lock ``name`` (blocking): for the files several workers
        change at once."""
        return file_lock(self.path / LOCKS_DIR / f"{name}.lock", what=f"{self.path} {name}",
                         blocking=True)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def study(self) -> str:
        return self.path.parent.name

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def config(self) -> StudyConfig:
        return read_study(self.config_path)

    @property
    def units(self) -> UnitStore:
        """Finished units, engine verdicts and stage states (:mod:`evalkit.core.units`)."""
        return UnitStore(self.path)

    # ---- records
    def stage_records_path(self, stage: str) -> Path:
        """Where the stage's records go: ``records/STAGE.parquet``, or, in a scoped run,
        ``records/parts/VARIANT[+VARIANT...]/STAGE.parquet``."""
        if self.scope:
            return self.path / "records" / "parts" / "+".join(self.scope) / f"{stage}.parquet"
        return self.path / "records" / f"{stage}.parquet"

    def write_stage_records(self, stage: str, df: pd.DataFrame) -> Path:
        """Write one stage's records and refresh the run's combined ``records.parquet``
        (a scoped run writes its part only)."""
        p = rec.write_records(df, self.stage_records_path(stage))
        if not self.scope:
            self.refresh_records()
        return p

    def refresh_records(self) -> pd.DataFrame:
        with self.lock("records"):
            frames = [rec.read_records(f)
                      for f in sorted((self.path / "records").glob("*.parquet"))]
            df = rec.combine(frames)
            rec.write_records(df, self.path / "records.parquet")
        return df

    def records(self) -> pd.DataFrame:
        return rec.load_runs(self.path)

    def log(self, message: str) -> None:
        """Append a timestamped line to logs/run.log (and print it).

        Raises:
            RunDirError: the log cannot be written (disk full, read-only).
        """
        line = f"{datetime.now(UTC).strftime('%H:%M:%S')} {message}"
        if self.scope:
            line = f"{line[:8]} [{'+'.join(self.scope)}]{line[8:]}"
        print(line, flush=True)
        try:
            # appends from workers on other nodes of a shared filesystem are not atomic
            with self.lock("log"), open(self.sub("logs", "run.log"), "a",
                                        encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot write logs/run.log "
                              f"({exc.strerror or exc}); the disk is full or read-only") from None


def create_run(cfg: StudyConfig, source: Path, run_id: str | None = None, *,
               hold_lock: ExitStack | None = None) -> Run:
    """Create a new run directory for ``cfg``.

    Args:
        cfg: the study.
        source: the study file as written (copied into the run).
        run_id: the id (default: UTC time plus a random suffix).
        hold_lock: take the run's lock right after creating the directory and keep it on
            this stack, so that no other process can resume the run before it is complete.

    Raises:
        RunDirError: the run id exists (use ``open_run`` to resume) or the root is not writable.
    """
    rid = run_id or new_run_id()
    path = Path(cfg.output_root) / cfg.study / rid
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        raise RunDirError(
            f"{path}: run already exists; resume it with --resume {rid} or omit --run-id"
        ) from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot create run directory ({exc.strerror})") from None
    if hold_lock is not None:
        hold_lock.enter_context(file_lock(path / "run.lock", what=f"run {rid}"))
    try:
        for d in ("notebooks", "html", "records", "raw", "units", "logs"):
            (path / d).mkdir()
    except OSError as exc:
        raise RunDirError(f"{path}: cannot create run directory ({exc.strerror})") from None
    run = Run(path.resolve())
    resolved = cfg.model_dump(mode="json")
    atomic_write_text(run.config_path, yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_text(path / "config.source.yaml", Path(source).read_text(encoding="utf-8"))
    atomic_write_json(path / "env.json", environment_info())
    return run


def open_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    if not (p / "config.yaml").is_file():
        raise RunDirError(f"{p}: not a run directory (no config.yaml)")
    return Run(p.resolve())


def list_runs(output_root: str | os.PathLike[str]) -> list[Run]:
    """All run directories under ``output_root``, newest first."""
    root = Path(output_root)
    runs = [Run(p.parent.resolve()) for p in root.glob("*/*/config.yaml")]
    runs += [Run(p.parent.resolve()) for p in root.glob("*/*/*/config.yaml")]
    return sorted(set(runs), key=lambda r: r.run_id, reverse=True)


# --------------------------------------------------------------------------------------
# environment


def stage_env(run: Run, stage: str) -> None:
    """Record the environment a stage ran in beside env.json: its kernel's packages
    (``stages``, the latest start of each), and every stage start with its machine
    (``attempts``: a resumed run may finish on another host or GPU than it started on; a
    cluster worker's start names its variants and its Ray node)."""
    env = run.path / "env.json"
    packages = {d: v for d in PACKAGES if (v := package_version(d))}
    attempt = {"stage": stage, "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
               **machine_info()}
    if run.scope:
        attempt["variants"] = list(run.scope)
    with run.lock("env"):
        info = read_json(env) if env.is_file() else {}
        info.setdefault("stages", {})[stage] = {"python": sys.executable, "packages": packages}
        info.setdefault("attempts", []).append(attempt)
        atomic_write_text(env, json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def set_cpu_threads(run: Run, stage: str) -> int:
    """Give torch as many threads as there are free cores, and log it.

    torch's OpenMP pool defaults to one thread per core; with a core taken by another
    process its threads wait on each other at every parallel region (on a 2-core machine
    with one core busy, GPTQ ran 14x slower than alone, hf scoring 1.6x).
    """
    import torch  # noqa: PLC0415 -- only stages that compute on the CPU call this

    free = free_cpu_cores()
    torch.set_num_threads(free)
    n = os.cpu_count() or 1
    run.log(f"{stage}: torch uses {free} thread(s)"
            + (f" ({n - free} of {n} cores busy with other work)" if free < n else ""))
    return free
