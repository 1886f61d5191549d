"""The latency point: one variant's measurement at one mode x workload x concurrency x
request rate, and the sweep of points a latency section describes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evalkit.core.specs import LatencySpec, Workload
from evalkit.core.traffic import load_label
from evalkit.core.units import UnitKey
from evalkit.stages.latency.raw import point_stem


@dataclass(frozen=True)
class Point:
    """One latency point of a variant (``concurrency`` is the batch size offline)."""

    mode: str
    workload: Workload
    concurrency: int
    request_rate: float
    burstiness: float = 1.0

    @property
    def load(self) -> str:
        """The load pattern (:func:`evalkit.core.traffic.load_label`; offline: ``batch``)."""
        if self.mode == "offline":
            return "batch"
        return load_label(self.request_rate, lengths_vary=self.workload.lengths_vary,
                          burstiness=self.burstiness)

    @property
    def is_rate(self) -> bool:
        """Requests arrive at a finite rate (a rate-sweep or Poisson point)."""
        return self.mode == "server" and not math.isinf(self.request_rate)

    @property
    def workload_name(self) -> str:
        return self.workload.name

    def key(self, variant: str) -> UnitKey:
        """The point's unit for ``variant``."""
        return UnitKey.latency(variant, self.mode, self.workload.name, self.concurrency,
                               self.request_rate)

    def stem(self) -> str:
        """File stem of a server point's raw data (:func:`point_stem`)."""
        return point_stem(self.workload.name, self.concurrency, self.request_rate)

    def fields(self) -> dict[str, Any]:
        """The point's columns in its records."""
        w = self.workload
        return dict(mode=self.mode, load=self.load, workload=w.name,
                    concurrency=self.concurrency, request_rate=self.request_rate,
                    input_len=w.input_len, output_len=w.output_len)


def sweep_points(lat: LatencySpec, mode: str) -> list[Point]:
    """Every grid point of ``mode`` (``server``: workloads x levels x request rates, then the
    rate sweeps' synchronous and throughput anchors not already among them; ``offline``:
    workloads x batch sizes). A rate sweep's own rates are :func:`rate_points`."""
    rates = lat.request_rate if mode == "server" else (math.inf,)
    out = [Point(mode, w, c, r) for w in lat.workloads for c in lat.levels(w, mode)
           for r in rates]
    if mode == "server":
        for p in anchor_points(lat):
            if p not in out:
                out.append(p)
    return out


def anchor_points(lat: LatencySpec) -> list[Point]:
    """Per rate-swept workload: the synchronous point (one request in flight) and the
    throughput point (``traffic.max_concurrency`` requests sent at once)."""
    t = lat.traffic
    if t is None:
        return []
    return [p for w in lat.traffic_workloads()
            for p in (Point("server", w, 1, math.inf), Point("server", w, t.max_concurrency,
                                                              math.inf))]


def rate_points(lat: LatencySpec, workload: Workload, rates: list[float]) -> list[Point]:
    """The rate sweep's points of ``workload`` at ``rates`` (arrivals at a rate, at most
    ``traffic.max_concurrency`` in flight)."""
    t = lat.traffic
    if t is None:
        return []
    return [Point("server", workload, t.max_concurrency, float(r), t.burstiness)
            for r in rates]
