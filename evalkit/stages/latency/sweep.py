"""The state of one latency stage run: its variants' checkpoints and tokenizers, the points
still to measure, the records gathered so far, the units that did not produce numbers, and
the record guards (floors, validity) every measured point goes through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.assets.checkpoints import checkpoint_for
from evalkit.assets.models import resolve_model
from evalkit.core import records as rec
from evalkit.core.config import StudyConfig
from evalkit.core.environment import hardware_label, node_info
from evalkit.core.errors import EvalkitError, StageError
from evalkit.core.io import json_exists, read_json
from evalkit.core.run import Run
from evalkit.core.schemes import SCHEMES, cpu_latency_skip_reason
from evalkit.core.specs import Variant
from evalkit.core.traffic import CLOSED_LOOP_WAVES
from evalkit.core.units import Failure, FailureKind, UnitKey
from evalkit.engine.energy import EnergyMeter
from evalkit.metrics import validity as val
from evalkit.metrics.roofline import memory_bandwidth
from evalkit.stages.latency.points import Point, anchor_points, sweep_points
from evalkit.stages.latency.raw import STAGE
from evalkit.stages.latency.rows import (
    Bandwidth,
    floor_model,
    guard_records,
    nan_point,
    roofline_records,
)

#: Per rate-swept workload: the sweep's rates, where they came from and the fill time its
#: trials were sized by (``raw/latency/traffic-rates.json``).
RATES_FILE = "traffic-rates.json"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in _TOKENIZER_FILES)

class LatencyStage:
    """State of one latency stage run (kept out of module globals)."""

    def __init__(self, cfg: StudyConfig, run: Run, checkpoints: Mapping[str, Path] | None,
                 resolved: Any | None) -> None:
        if cfg.latency is None:
            raise StageError("the study has no latency section; nothing to measure")
        self.cfg, self.run, self.lat = cfg, run, cfg.latency
        self.model = resolved if resolved is not None else resolve_model(cfg.model)
        self.checkpoints = dict(checkpoints) if checkpoints is not None else None
        self.hardware = hardware_label(cfg.engine.device)
        self.raw = run.path / "raw" / STAGE
        self.frames: list[pd.DataFrame] = []
        self.failures: list[Failure] = []
        self.bandwidth: Bandwidth | None = None
        self.quant_weight_bytes = self._quantize_weight_bytes()
        self.trials = self.lat.trials_for(cfg.engine.device)
        self._floors: dict[str, val.FloorModel] = {}
        self._tokenizers: dict[Path, Any] = {}
        self._meter: EnergyMeter | None = None
        self._grid = set(sweep_points(self.lat, "server")) - set(anchor_points(self.lat))

    # ---- variants
    def checkpoint(self, v: Variant) -> Path:
        if self.checkpoints is not None:
            if v.name not in self.checkpoints:
                raise StageError(f"no checkpoint given for variant '{v.name}'")
            return Path(self.checkpoints[v.name])
        return Path(checkpoint_for(self.run, v.name))

    def tokenizer_for(self, ckpt: Path) -> Path:
        if _has_tokenizer(ckpt):
            return ckpt
        base = getattr(self.model, "path", None)
        if base is not None and _has_tokenizer(Path(base)):
            return Path(base)
        raise StageError(f"{ckpt}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in the "
                         f"checkpoint or the model directory")

    def common(self, v: Variant) -> dict[str, Any]:
        return dict(run_id=self.run.run_id, study=self.cfg.study,
                    model=str(getattr(self.model, "name", "") or ""), variant=v.name,
                    scheme=v.scheme, method=v.method, stage=STAGE, backend="vllm",
                    hardware=self.hardware)

    def cpu_skip_reason(self, v: Variant) -> str:
        """Why ``v`` gets no latency sweep on this CPU ('' where it does, and on GPUs)."""
        if self.cfg.engine.device != "cpu" or self.lat.cpu_without_kernel == "try":
            return ""
        return cpu_latency_skip_reason(SCHEMES[v.scheme])

    # ---- points and units
    def points(self, mode: str) -> list[Point]:
        return sweep_points(self.lat, mode)

    def trials_for(self, p: Point) -> int:
        """Trials of point ``p`` (a rate point: ``traffic.trials`` when set)."""
        t = self.lat.traffic
        if p.is_rate and t is not None and t.trials is not None:
            return t.trials
        return self.trials

    def rate_plans(self) -> dict[str, Any]:
        """The run's rate-sweep plans per workload (``traffic-rates.json``; empty if none)."""
        f = self.raw / RATES_FILE
        return read_json(f) if json_exists(f) else {}

    def fill_s(self, workload: str) -> float:
        """The fill time a rate sweep of ``workload`` sized its trials by (``fill_s`` of its
        plan; 0 when none was recorded)."""
        return float(self.rate_plans().get(workload, {}).get("fill_s") or 0.0)

    def requests_for(self, p: Point, trials: int) -> int:
        """Requests one trial of ``p`` sends: a rate point ``rate x traffic.trial_s(fill)``
        (:meth:`fill_s`), a rate sweep's anchors ``traffic.sync_requests`` /
        ``throughput_n()``, a grid point
        ``latency.prompts_per_trial`` (a mix's closed loop at least ``CLOSED_LOOP_WAVES``
        waves)."""
        t = self.lat.traffic
        if t is not None and p not in self._grid:
            if p.is_rate:
                return t.requests_at(p.request_rate, self.fill_s(p.workload.name))
            if p.concurrency == 1:
                return t.sync_requests
            return max(t.throughput_n(), p.concurrency)
        n = self.lat.prompts_per_trial(p.concurrency, trials)
        if p.workload.lengths_vary and math.isinf(p.request_rate):
            n = max(n, CLOSED_LOOP_WAVES * p.concurrency)
        return n

    def energy_meter(self) -> EnergyMeter:
        """The board-energy meter of this study's engines (NaN readings on a CPU), opened
        once per stage run: points use it one after another."""
        engine = self.cfg.engine
        if self._meter is None and engine.executor == "ray":
            # Ray places the engine's workers anywhere in its cluster: the GPUs of this
            # machine's NVML need not be theirs
            self._meter = EnergyMeter([], None, "not measured: executor ray places the "
                                      "engine's GPUs in the Ray cluster, beyond this "
                                      "machine's NVML counters")
        elif self._meter is None:
            self._meter = EnergyMeter.open(engine.device, engine.gpus_per_engine)
        return self._meter

    def hf_tokenizer(self, path: Path) -> Any:
        """The tokenizer at ``path`` (loaded once), for writing a mix's prompts."""
        if path not in self._tokenizers:
            from transformers import AutoTokenizer  # noqa: PLC0415 -- heavy, only for mixes

            self._tokenizers[path] = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=self.cfg.model.trust_remote_code)
        return self._tokenizers[path]

    def save_unit(self, v: Variant, key: UnitKey, df: pd.DataFrame, status: str) -> None:
        p = rec.write_records(df, self.run.units.unit_records_path(key))
        self.frames.append(df)
        # the node each point ran on: points of one study may come from several cluster nodes
        self.run.units.mark(key, {"records": str(p.relative_to(self.run.path)),
                                  "status": status, "variant": v.name, "node": node_info()})

    def reuse(self, v: Variant, key: UnitKey) -> bool:
        done = self.run.units.done(key)
        if done is None:
            return False
        p = self.run.path / done["records"]
        if not p.is_file():
            self.run.log(f"latency: {key.encode()} marked done but {p} is missing; "
                         "measuring again")
            return False
        self.frames.append(rec.read_records(p))
        self.run.log(f"latency: {key.encode()} already measured in this run (an earlier stage "
                     "or attempt); reusing its records")
        return True

    def todo(self, v: Variant, mode: str, bar: Any) -> list[Point]:
        """Points of ``mode`` still to measure; finished ones are reused (and counted)."""
        out = []
        for p in self.points(mode):
            if self.reuse(v, p.key(v.name)):
                bar.update(1)
            else:
                out.append(p)
        return out

    def pending(self, v: Variant) -> list[Point]:
        """Server-mode points of ``v`` not measured yet (no unit marker)."""
        return [p for p in self.points("server") if not self.run.units.done(p.key(v.name))]

    def status_rows(self, v: Variant, mode: str, status: FailureKind, note: str,
                    reason: str | None = None) -> None:
        """A variant that cannot be measured in ``mode``: one NaN record (metric tpot_ms, stat
        mean) per point not measured yet, and its points among the failures (``reason``,
        default ``note``). Unsupported points are marked done (deterministic: a resumed run
        need not try again) and stay among the failures on resume; points done earlier (in
        an earlier attempt, or a cluster worker) keep the records they were saved with."""
        pts = self.points(mode)
        open_pts = [p for p in pts if not self.run.units.done(p.key(v.name))]
        for p in pts:
            if p not in open_pts and self.reuse(v, p.key(v.name)):
                continue
            df = nan_point(self.common(v), p, status, note)
            if status == "unsupported":
                self.save_unit(v, p.key(v.name), df, status)
            else:
                self.frames.append(df)
        for p in (pts if status == "unsupported" else open_pts or pts):
            self.fail(p.key(v.name), status, reason if reason is not None else note)

    def point_failed(self, v: Variant, p: Point, why: str) -> None:
        """A NaN ``failed`` record for one point (no unit marker: resume measures it again)."""
        self.frames.append(nan_point(self.common(v), p, "failed", why))

    def fail(self, key: UnitKey, kind: FailureKind, reason: str) -> None:
        self.failures.append(Failure(key, kind, reason))

    # ---- records built from what is known
    def _quantize_weight_bytes(self) -> dict[str, float]:
        p = self.run.stage_records_path("quantize")
        if not p.is_file():
            return {}
        q = rec.read_records(p)
        q = q[(q["metric"] == "weight_bytes") & (q["status"] == "ok")]
        # presets have no weights to count (NaN): their bytes are estimated from the config
        return {str(r.variant): float(r.value) for r in q.itertuples() if math.isfinite(r.value)}

    def bandwidth_now(self) -> Bandwidth:
        if self.bandwidth is None:
            self.bandwidth = memory_bandwidth(self.cfg.engine.device)
        return self.bandwidth

    def collect(self) -> list[pd.DataFrame]:
        """The records gathered so far; the list starts empty again."""
        out, self.frames = self.frames, []
        return out

    def roofline_again(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with its roofline rows computed again for every variant, for the hardware
        and bandwidth this state holds (a rebuild on another host than the measuring one)."""
        self.frames = [df[~df["metric"].isin(["roofline_tpot_ms", "tpot_pct_of_roofline"])]]
        for v in self.cfg.variants:
            self.roofline_rows(v, self.checkpoint_for_floors(v))
        return rec.combine(self.collect())

    def roofline_rows(self, v: Variant, ckpt: Path | None) -> None:
        self.frames.append(roofline_records(
            self.cfg, v, ckpt, bandwidth=self.bandwidth_now(),
            quant_weight_bytes=self.quant_weight_bytes, frames=self.frames,
            common=self.common(v)))

    def guard(self, v: Variant, df: pd.DataFrame, *, server_delta: Mapping[str, Any] | None = None,
              offline_iters: Sequence[Mapping[str, Any]] | None = None,
              prefix_caching: bool | None = None, jit: Sequence[str] = (),
              floor_input_len: int | None = None,
              kv_cache_tokens: int | None = None) -> pd.DataFrame:
        """A point's records with the validity rows and marks (:func:`rows.guard_records`)."""
        if v.name not in self._floors:
            self._floors[v.name] = floor_model(
                self.cfg, v, self.checkpoint_for_floors(v), hardware=self.hardware,
                bandwidth=self.bandwidth_now(), quant_weight_bytes=self.quant_weight_bytes)
        caching = self.cfg.engine.prefix_caching if prefix_caching is None else prefix_caching
        return guard_records(df, self._floors[v.name], prefix_caching=caching,
                             server_delta=server_delta, offline_iters=offline_iters, jit=jit,
                             floor_input_len=floor_input_len, kv_cache_tokens=kv_cache_tokens)

    def checkpoint_for_floors(self, v: Variant) -> Path | None:
        try:
            ckpt = self.checkpoint(v)
        except EvalkitError:
            ckpt = None
        if ckpt is None or not (ckpt / "config.json").is_file():
            # checkpoints built on another host: the architecture's config is all it needs
            base = getattr(self.model, "path", None)
            return Path(base) if base is not None else None
        return ckpt
