"""GPU energy of a timed window, read from NVML's cumulative energy counters.

``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded; Volta and
newer) read before and after a window gives the board energy the engine's GPUs drew in it,
sampling-free. The engine's GPUs are the first ``gpus`` of ``CUDA_VISIBLE_DEVICES`` (NVML
numbers devices physically and ignores that variable). On a CPU, or without NVML, there is
nothing to read: :meth:`EnergyMeter.open` returns a meter whose readings are NaN with the
reason, so a record says "not measured" rather than 0.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyReading:
    """Energy drawn over one window (NaN joules when not measured, ``note`` says why)."""

    joules: float
    seconds: float
    note: str

    @property
    def mean_power_w(self) -> float:
        """Mean board power over the window (joules / seconds)."""
        if math.isnan(self.joules) or not self.seconds > 0:
            return math.nan
        return self.joules / self.seconds


class EnergyMeter:
    """Board energy of the engine's GPUs between :meth:`start` and :meth:`stop`."""

    def __init__(self, handles: list[object], nvml: object | None, note: str) -> None:
        self._handles, self._nvml, self.note = handles, nvml, note
        self._t0 = 0.0
        self._e0: list[int] = []

    @classmethod
    def open(cls, device: str, gpus: int = 1) -> EnergyMeter:
        """A meter for the first ``gpus`` visible GPUs (a NaN meter on a CPU or without NVML)."""
        if device != "cuda":
            return cls([], None, "not measured on a CPU (no board energy counter)")
        try:
            import pynvml  # noqa: PLC0415 -- nvidia-ml-py, present on GPU hosts only

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
            ids = ([int(x) for x in visible.split(",") if x.strip().isdigit()]
                   if visible else list(range(pynvml.nvmlDeviceGetCount())))
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids[:max(gpus, 1)]]
            for h in handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception as exc:  # noqa: BLE001 -- any NVML failure means "not measured"
            return cls([], None, f"not measured: NVML energy counter unavailable ({exc})")
        return cls(handles, pynvml, f"NVML total energy counter of {len(handles)} GPU(s)")

    def _read(self) -> list[int]:
        return [int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h))  # type: ignore[union-attr]
                for h in self._handles]

    def start(self) -> None:
        """Begin a window."""
        self._t0 = time.monotonic()
        self._e0 = self._read() if self._nvml is not None else []

    def stop(self) -> EnergyReading:
        """End the window: the energy drawn since :meth:`start`."""
        seconds = time.monotonic() - self._t0
        if self._nvml is None:
            return EnergyReading(math.nan, seconds, self.note)
        e1 = self._read()
        mj = sum(b - a for a, b in zip(self._e0, e1, strict=True))
        return EnergyReading(mj / 1000.0, seconds, self.note)
