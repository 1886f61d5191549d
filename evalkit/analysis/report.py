"""Join quality and speed: tables, figures and claim checks from tidy records.

Everything here is a pure function of a records DataFrame (plus the study config for
names and claims); figures are returned, never saved or shown here.

Definitions used throughout (stated in every caption):

* TTFT/TPOT are vLLM's: TTFT per request; TPOT = (E2E latency - TTFT) / (output tokens - 1).
  The headline uses the median (p50) over requests of one workload at one concurrency.
* gain vs X (%) = (metric_X - metric_variant) / metric_X x 100: positive means faster than X.
* quality delta = variant score - base score on the same documents (paired), in points of the
  task's primary metric; its 95% interval is a paired bootstrap over documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.analysis import capacity as cap
from evalkit.analysis.claims import claim_check
from evalkit.analysis.quality import quality_per_variant
from evalkit.analysis.speed import quality_speed
from evalkit.metrics import points as pts

__all__ = ["Report"]


@dataclass
class Report:
    """Everything notebook 04 shows, computed once from a run's records."""

    records: pd.DataFrame
    study: str
    model: str
    hardware: str
    workload: str | None
    concurrency: int | None
    reference: str | None
    caveats: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    claims: tuple[Any, ...] = ()
    base: str = "base"
    #: id of the earlier run of the study this one is compared with (None: there is none).
    previous_run: str | None = None
    #: :func:`evalkit.analysis.compare.compare` of the previous run (A) with this one (B).
    changes: pd.DataFrame | None = None
    #: per-request latency values (:func:`evalkit.stages.latency.raw.request_samples`), for intervals.
    samples: pd.DataFrame | None = None
    #: mode of the headline point: server (concurrency) or offline (batch size).
    mode: str = "server"
    #: GPUs one engine spans (0 on a CPU run), for tokens/s per GPU.
    gpus_per_engine: int = 1
    #: per-request SLO limits (ms) for goodput.
    slo: dict[str, float] = field(default_factory=dict)
    #: why the run's claims do not apply beyond its hardware (e.g. an eager GPU engine).
    claim_caveat: str | None = None
    #: percentile of TTFT and TPOT that capacity at the SLO holds to the limits (``slo``).
    slo_percentile: float = 90.0
    #: price of a GPU-hour for the cost per million output tokens at capacity (None: none).
    cost_per_gpu_hour_usd: float | None = None
    #: the run directory (its raw capacity files hold the bootstrap draws of capacity).
    run_path: Path | None = None
    #: real model weights (a quality delta can be measured); False for random-weight shapes.
    real_weights: bool = True
    #: state of each stage that is not ``done`` (``interrupted``, ``failed``, ``running``).
    stage_states: dict[str, str] = field(default_factory=dict)
    #: an interrupted or failed latency stage: the variants whose every planned latency unit
    #: finished (their points decide; the others' do not). ``None`` when the stage finished.
    latency_finished: tuple[str, ...] | None = None
    #: the GPU engine ran eager (no CUDA graphs, no torch.compile): not a serving setup.
    eager_gpu: bool = False
    #: quality a recommended scheme may lose, in points (``report.quality_tolerance_pts``).
    quality_tolerance_pts: float = 1.0
    #: the report's page title (``report.title``, else from study and model).
    title: str = ""
    #: per variant, what its offline engine's log said (kernels, CUDA graphs, ...)
    offline_engines: dict[str, str] = field(default_factory=dict)
    #: per variant vLLM ran with another scheme's activations, why its figures are not its
    #: scheme's (:func:`evalkit.analysis.load.engine_scheme_substitutions`): its points
    #: never decide and the verdict card lists none of its figures as its scheme's
    substituted: dict[str, str] = field(default_factory=dict)
    _points: pd.DataFrame | None = field(default=None, repr=False)
    _gains: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict, repr=False)
    _capacity: pd.DataFrame | None = field(default=None, repr=False)
    _rates: pd.DataFrame | None = field(default=None, repr=False)

    def point_records(self) -> pd.DataFrame:
        """The records without rate-sweep points (:func:`evalkit.analysis.capacity.rate_rows`):
        their concurrency is a client cap, not a load level, and would otherwise join the
        concurrency point that shares it."""
        return self.records[~cap.rate_rows(self.records).to_numpy()]

    def point_samples(self) -> pd.DataFrame | None:
        """Per-request values of the concurrency points only (none of a rate point's)."""
        s = self.samples
        if s is None or s.empty or "request_rate" not in s:
            return s
        rate = pd.to_numeric(s["request_rate"], errors="coerce").to_numpy(dtype=float)
        return s[~(np.isfinite(rate) & (s["mode"] == "server").to_numpy())]

    def table(self) -> pd.DataFrame:
        if self.workload is None or self.concurrency is None:
            return quality_per_variant(self.records)
        return quality_speed(self.records, workload=self.workload, concurrency=self.concurrency,
                             reference=self.reference, base=self.base, mode=self.mode)

    def points(self) -> pd.DataFrame:
        """:func:`evalkit.metrics.points.latency_points` of the run's concurrency points, with
        each point's ``load`` pattern (:func:`evalkit.analysis.capacity.point_loads`);
        computed once. Rate-sweep points are in :meth:`rates`."""
        if self._points is None:
            p = pts.latency_points(self.point_records(), gpus_per_engine=self.gpus_per_engine,
                                   samples=self.point_samples())
            loads = cap.point_loads(self.records)
            p = p.drop(columns=["load"], errors="ignore").merge(
                loads, on=["variant", "mode", "workload", "concurrency"], how="left")
            p["load"] = [cap.load_of(m, x, None) for m, x in zip(
                p["mode"], p["load"].astype("object").where(p["load"].notna(), None),
                strict=True)]
            self._points = p
        return self._points

    def rates(self) -> pd.DataFrame:
        """:func:`evalkit.analysis.capacity.rate_points` of the run (computed once)."""
        if self._rates is None:
            self._rates = cap.rate_points(self.records)
        return self._rates

    def capacity(self) -> pd.DataFrame:
        """:func:`evalkit.analysis.capacity.capacity_table` of the run, gains against
        ``reference`` (else ``base``); computed once. Empty without rate sweeps."""
        if self._capacity is None:
            self._capacity = cap.capacity_table(
                self.records, self.run_path, self.reference, self.cost_per_gpu_hour_usd,
                base=self.base, slo=self.slo, percentile=self.slo_percentile)
        return self._capacity

    def comparisons(self) -> list[tuple[str, str]]:
        """(variant, reference) pairs the answer speaks of: every other variant with latency
        against the reference variant, and every quantized variant against base."""
        have = list(pd.unique(self.points()["variant"]))
        out = []
        if self.reference in have:
            out += [(v, self.reference) for v in have if v not in (self.reference, self.base)]
        if self.base in have:
            out += [(v, self.base) for v in have if v != self.base]
        return list(dict.fromkeys(out))  # the reference may be base itself: each pair once

    def gains(self, variant: str, reference: str) -> pd.DataFrame:
        """:func:`evalkit.metrics.points.point_gains` of one comparison (bootstrapped once; the
        answer, the regime table, the summary and the index all read it)."""
        key = (variant, reference)
        if key not in self._gains:
            self._gains[key] = pts.point_gains(self.points(), self.point_samples(),
                                               variant=variant, reference=reference)
        return self._gains[key]

    def caption(self, what: str) -> str:
        where = "concurrency" if self.mode == "server" else "offline batch size"
        point = (f"workload {self.workload} at {where} {self.concurrency}"
                 if self.workload else "no latency workload")
        return (f"{what} Model {self.model}; hardware {self.hardware}; {point}. "
                "TTFT/TPOT: vLLM definitions, p50 over requests; TPOT = (E2E - TTFT)/(out - 1). "
                "gain = (ref - variant)/ref x 100, > 0 is faster. Quality delta: paired vs base, "
                "95% paired-bootstrap CI.")

    def claims_checked(self) -> pd.DataFrame:
        checks = claim_check(self.point_records(), list(self.claims), hardware=self.hardware,
                             samples=self.point_samples())
        if self.claim_caveat and len(checks):
            checks["applies"] = False
            checks["note"] = [f"{n}; {self.claim_caveat}" if isinstance(n, str) and n else
                              self.claim_caveat for n in checks.get("note", [""] * len(checks))]
        return checks
