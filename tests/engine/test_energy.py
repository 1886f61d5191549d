"""evalkit.engine.energy: a CPU run has no board energy counter (NaN with the reason, never
0); on a GPU host NVML's cumulative counter gives the energy of a window."""

from __future__ import annotations

import math
import time

import pytest

from evalkit.engine.energy import EnergyMeter, EnergyReading


def test_cpu_energy_is_not_measured_not_zero():
    meter = EnergyMeter.open("cpu")
    meter.start()
    reading = meter.stop()
    assert math.isnan(reading.joules) and math.isnan(reading.mean_power_w)
    assert reading.seconds >= 0 and "not measured on a CPU" in reading.note


def test_mean_power_is_energy_over_time():
    assert EnergyReading(300.0, 2.0, "x").mean_power_w == 150.0
    assert math.isnan(EnergyReading(300.0, 0.0, "x").mean_power_w)


@pytest.mark.gpu
def test_gpu_window_draws_energy():
    """On a CUDA host: a busy window of a second draws more than idle-board energy of 10 W."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    meter = EnergyMeter.open("cuda")
    if not meter.note.startswith("NVML"):
        pytest.skip(meter.note)
    x = torch.randn(8192, 8192, device="cuda")
    meter.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        x = x @ x
        x = x / x.norm()
    torch.cuda.synchronize()
    reading = meter.stop()
    assert reading.joules > 10.0 * reading.seconds, reading
