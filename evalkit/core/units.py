"""Units of work, the one store that remembers them, and what a stage returns.

A *unit* is the smallest piece of a stage that is finished, kept and skipped on resume as a
whole: one variant's quantization, one variant x task evaluation, one latency point
(variant x mode x workload x concurrency x request rate). :class:`UnitKey` names a unit and
encodes it into the one string its marker file is named after; :class:`UnitStore` is the
only code that reads or writes the markers, the engine verdicts the stages share, and the
per-stage states of ``status.json``. On disk (unchanged since the first runs, so committed
runs resume)::

    units/<stage>/<key>.json     one marker per finished unit (its ``info``)
    units/engine/<variant>.json  the engine's verdict on a variant it cannot serve here
    status.json                  {"stages": {stage: {"state": ..., "time_utc": ...}},
                                  "variants": {variant: {stage: {...}}}}

``status.json["variants"]`` holds the states of the stages a cluster worker ran for its own
variants (``evalkit run --cluster``, :mod:`evalkit.cluster`); ``status.json["stages"]`` stays
the run's stages as a whole. Workers on several nodes change the file at once, so every change
is a read-modify-write under ``locks/status.lock``.

Every stage's ``run_stage(cfg, run)`` returns a :class:`StageResult`: its records and the
units that did not produce numbers (:class:`Failure`). Failed units are data: they are in
the records with ``status="failed"``; the caller decides when to raise
(:meth:`StageResult.raise_for_failures`), so a notebook shows its tables first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from evalkit.core.errors import StageError
from evalkit.core.io import atomic_write_json, file_lock, read_json

if TYPE_CHECKING:
    import pandas as pd

FailureKind = Literal["failed", "unsupported"]

#: the engine verdicts are kept beside the stages' units, under this name
ENGINE_VERDICTS = "engine"


def rate_label(rate: float) -> str:
    """A request rate as it appears in keys and file names: ``inf`` or ``%g``."""
    return "inf" if math.isinf(rate) else f"{rate:g}"


@dataclass(frozen=True)
class UnitKey:
    """One unit of one stage. Build it with :meth:`quantize`, :meth:`accuracy`,
    :meth:`quality` or :meth:`latency`; :meth:`encode` is the one encoder of a key."""

    stage: str
    variant: str
    task: str | None = None
    mode: str | None = None
    workload: str | None = None
    concurrency: int | None = None
    request_rate: float | None = None

    @classmethod
    def quantize(cls, variant: str) -> UnitKey:
        return cls("quantize", variant)

    @classmethod
    def accuracy(cls, variant: str, task: str) -> UnitKey:
        return cls("accuracy", variant, task=task)

    @classmethod
    def quality(cls, variant: str) -> UnitKey:
        return cls("quality", variant)

    @classmethod
    def latency(cls, variant: str, mode: str, workload: str, concurrency: int,
                request_rate: float) -> UnitKey:
        return cls("latency", variant, mode=mode, workload=workload,
                   concurrency=int(concurrency), request_rate=float(request_rate))

    def encode(self) -> str:
        """``variant`` (quantize, quality), ``variant/task`` (accuracy),
        ``variant/mode/workload/c<C>/r<R>`` (latency)."""
        if self.stage == "accuracy":
            return f"{self.variant}/{self.task}"
        if self.stage == "latency":
            return (f"{self.variant}/{self.mode}/{self.workload}/c{self.concurrency}"
                    f"/r{rate_label(float(self.request_rate or 0.0))}")
        return self.variant

    def file_stem(self) -> str:
        """The encoded key made safe as a file name (marker and per-unit record files)."""
        return _safe(self.encode())

    def label(self) -> str:
        """What a person reads in a failure list: the key without the variant."""
        if self.stage == "accuracy":
            return str(self.task)
        if self.stage == "latency":
            return (f"{self.mode} {self.workload} c={self.concurrency} "
                    f"rate={rate_label(float(self.request_rate or 0.0))}")
        return self.stage

    def __str__(self) -> str:
        return f"{self.stage} {self.encode()}"


@dataclass(frozen=True)
class Failure:
    """A unit that produced no numbers, and why (its records say the same with
    ``status=kind`` and ``note=reason``)."""

    unit: UnitKey
    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return f"{self.unit.encode()}: {self.reason}"


@dataclass
class StageResult:
    """What ``run_stage`` returns: the stage's records (also written into the run) and the
    units that did not produce numbers."""

    stage: str
    records: pd.DataFrame
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> list[Failure]:
        return [f for f in self.failures if f.kind == "failed"]

    @property
    def unsupported(self) -> list[Failure]:
        return [f for f in self.failures if f.kind == "unsupported"]

    def raise_for_failures(self, *, unsupported_is_error: bool = False) -> None:
        """Raise one :class:`StageError` listing every failed unit (and, when asked, every
        unsupported one); the records are already written.

        Raises:
            StageError: some unit failed.
        """
        bad = self.failed + (self.unsupported if unsupported_is_error else [])
        if bad:
            listed = "; ".join(f"{f}" if f.kind == "failed" else f"unsupported: {f}"
                               for f in bad)
            raise StageError(f"{self.stage} stage: {len(bad)} unit(s) did not finish "
                             f"(others kept): {listed}")


def _safe(key: str) -> str:
    clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    if len(clean) > 80 or clean != key:
        clean = clean[:60] + "-" + hashlib.sha1(key.encode()).hexdigest()[:10]
    return clean


#: written by the runner when it is stopped (:meth:`UnitStore.request_stop`)
STOP_FILE = "stop-requested.json"

#: set by a cluster worker (:mod:`evalkit.cluster`) for the notebook kernels it starts: the
#: worker's pid. A kernel that outlived its worker (the worker died) marks no unit done, so a
#: resume measures the unit again.
WORKER_PID_ENV = "EVALKIT_WORKER_PID"


def _alive(pid: int) -> bool:
    """``pid`` runs (a killed worker its parent has not reaped yet is a zombie: not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: existence must do
    return state not in ("Z", "X")


#: the run's write locks of files several processes change (status.json, env.json, the run
#: log, the joined records): ``<run>/locks/<name>.lock`` (removed by ``evalkit archive``)
LOCKS_DIR = "locks"


class UnitStore:
    """The run's memory of finished work: unit markers, engine verdicts, stage states."""

    def __init__(self, run_path: Path) -> None:
        self.root = Path(run_path)

    def _marker(self, stage: str, key: str) -> Path:
        return self.root / "units" / stage / f"{_safe(key)}.json"

    def unit_records_path(self, key: UnitKey) -> Path:
        """Where a unit's own records are kept, for stages that reuse them on resume (latency:
        ``raw/latency/<variant>/units/<key>.parquet``)."""
        return self.root / "raw" / key.stage / key.variant / "units" / f"{key.file_stem()}.parquet"

    # ---- units
    def done(self, key: UnitKey) -> dict[str, Any] | None:
        """The marker of a finished unit, or None."""
        p = self._marker(key.stage, key.encode())
        return read_json(p) if p.is_file() else None

    def mark(self, key: UnitKey, info: dict[str, Any]) -> None:
        """Remember a finished unit (atomically; a later mark of the same unit replaces it:
        a resumed run re-measures only units it did not finish).

        Raises:
            KeyboardInterrupt: ``evalkit run`` was stopped (:meth:`request_stop`) while this
                unit ran in one of its kernels; the unit is not marked, a resume measures it.
        """
        stop = self._stop_request()
        if stop is not None:
            raise KeyboardInterrupt(f"{key.encode()} finished after the run was stopped "
                                    f"({stop}); not marked done")
        atomic_write_json(self._marker(key.stage, key.encode()), info)

    # ---- a stop asked by the runner (SIGINT/SIGTERM), seen by its notebook kernels
    def request_stop(self, reason: str) -> None:
        """Ask this process's notebook kernels to mark no further unit done.

        The interrupt sent to a kernel can come too late to stop the unit it is in (the
        kernel is in a session of its own and papermill interrupts it only while shutting it
        down); this marker is read before every :meth:`mark`. Only kernels whose parent is
        this process honour it, so a notebook opened later by hand is not affected.
        """
        atomic_write_json(self.root / STOP_FILE, {"pid": os.getpid(), "reason": reason})

    def clear_stop(self) -> None:
        """Forget a stop request (a new ``evalkit run`` on this run starts)."""
        p = self.root / STOP_FILE
        if p.is_file():
            p.unlink()

    def _stop_request(self) -> str | None:
        worker = os.environ.get(WORKER_PID_ENV)
        if worker and not _alive(int(worker)):
            return f"its cluster worker (pid {worker}) is gone"
        p = self.root / STOP_FILE
        try:
            req = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return str(req.get("reason", "stopped")) if req.get("pid") == os.getppid() else None

    def unit_nodes(self, stage: str) -> dict[str, list[str]]:
        """The nodes the finished units of ``stage`` ran on, as their markers record them
        (latency points do): ``{node: [variants]}``, the node as ``host`` or ``host (Ray node
        ID12...)``. Units recorded without a node are left out."""
        out: dict[str, set[str]] = {}
        for marker in sorted((self.root / "units" / stage).glob("*.json")):
            try:
                info = read_json(marker)
            except (OSError, ValueError):
                continue
            node = info.get("node") if isinstance(info, dict) else None
            if not isinstance(node, dict) or not node.get("hostname"):
                continue
            rid = node.get("ray_node_id")
            label = str(node["hostname"]) + (f" (Ray node {str(rid)[:12]}...)" if rid else "")
            out.setdefault(label, set()).add(str(info.get("variant", "?")))
        return {label: sorted(vs) for label, vs in sorted(out.items())}

    def counts(self) -> dict[str, int]:
        """Finished units per stage (engine verdicts are not units)."""
        units = self.root / "units"
        return {d.name: len(list(d.glob("*.json"))) for d in sorted(units.glob("*"))
                if d.is_dir() and d.name != ENGINE_VERDICTS}

    # ---- engine verdicts: what the engine said about a variant it cannot serve here
    def engine_verdict(self, variant: str) -> dict[str, str] | None:
        p = self._marker(ENGINE_VERDICTS, variant)
        return read_json(p) if p.is_file() else None

    def set_engine_verdict(self, variant: str, status: str, reason: str, stage: str) -> None:
        atomic_write_json(self._marker(ENGINE_VERDICTS, variant),
                          {"status": status, "reason": reason, "stage": stage})

    # ---- stage states (status.json)
    def _status(self) -> dict[str, Any]:
        p = self.root / "status.json"
        data = read_json(p) if p.is_file() else {}
        data.setdefault("stages", {})
        return data

    def stage_states(self) -> dict[str, dict[str, Any]]:
        """The run's stages as a whole: ``{stage: {"state": ..., "time_utc": ...}}``."""
        return self._status()["stages"]

    def variant_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        """What cluster workers ran per variant: ``{variant: {stage: {"state": ...}}}``."""
        return self._status().get("variants", {})

    def set_stage_state(self, stage: str, state: str, *, variant: str | None = None,
                        **extra: object) -> None:
        """Record a stage's state, of the whole run or (``variant``) of one cluster worker's
        share; read-modify-write under a lock, since workers on other nodes write too."""
        entry = {"state": state, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 **extra}
        with file_lock(self.root / LOCKS_DIR / "status.lock",
                       what=f"{self.root} status.json", blocking=True):
            data = self._status()
            if variant is None:
                data["stages"][stage] = entry
            else:
                data.setdefault("variants", {}).setdefault(variant, {})[stage] = entry
            atomic_write_json(self.root / "status.json", data)
