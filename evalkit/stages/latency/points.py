"""The latency point: one variant's measurement at one mode x workload x concurrency x
request rate, and the sweep of points a latency section describes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evalkit.core.config import LatencySpec, Workload
from evalkit.core.units import UnitKey
from evalkit.metrics.raw import point_stem


@dataclass(frozen=True)
class Point:
    """One latency point of a variant (``concurrency`` is the batch size offline)."""

    mode: str
    workload: Workload
    concurrency: int
    request_rate: float

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
        return dict(mode=self.mode, workload=w.name, concurrency=self.concurrency,
                    request_rate=self.request_rate, input_len=w.input_len,
                    output_len=w.output_len)


def sweep_points(lat: LatencySpec, mode: str) -> list[Point]:
    """Every point of ``mode`` (``server``: workloads x levels x request rates; ``offline``:
    workloads x batch sizes)."""
    rates = lat.request_rate if mode == "server" else (math.inf,)
    return [Point(mode, w, c, r) for w in lat.workloads for c in lat.levels(w, mode)
            for r in rates]
