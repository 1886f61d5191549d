"""The study file's traffic settings: how a workload's request lengths vary (:class:`Lengths`)
and the rate sweep that measures capacity at an SLO (:class:`TrafficSpec`).

A workload with fixed lengths under closed-loop concurrency is a burst: its requests start and
finish together, wave after wave. Production traffic has a length distribution and arrivals
over time; these sections describe that load, and every measured point carries its label
(:func:`load_label`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from evalkit.core.spec_base import PosInt, SpecModel


class Lengths(SpecModel):
    """How one side of a workload's requests (prompt or output) varies in length.

    The workload's ``input_len`` / ``output_len`` is the centre: every request's length when
    ``fixed``, the middle of the range when ``uniform``, the mean when ``lognormal``; with
    ``empirical`` lengths it is a label only (the lengths are those of real text).
    """

    dist: Literal["fixed", "uniform", "lognormal", "empirical"] = Field(
        "fixed",
        description="fixed: every request the same length (a burst under closed-loop load); "
        "uniform: within +-range_ratio of the centre (vLLM's --random-range-ratio); "
        "lognormal: mean = the centre, sd given, clipped to min/max; empirical: the natural "
        "token lengths of real text (source), clipped to min/max.",
    )
    range_ratio: float | None = Field(
        None, gt=0, lt=1, description="uniform: lengths in [centre x (1 - r), centre x (1 + r)].")
    sd: float | None = Field(None, gt=0, description="lognormal: standard deviation in tokens.")
    min: PosInt | None = Field(None, description="lognormal/empirical: shortest length kept "
                               "(shorter draws are clipped up to it).")
    max: PosInt | None = Field(None, description="lognormal/empirical: longest length kept "
                               "(longer draws are clipped down to it).")
    source: Literal["chat", "rag"] | None = Field(
        None, description="empirical: chat (one task-pack question with its choices: ARC, "
        "HellaSwag, PIQA, WinoGrande, BoolQ; as output: GSM8K solution lengths) or rag (3-8 "
        "BoolQ passages and a question; input only).")

    @model_validator(mode="after")
    def _fields(self) -> Lengths:
        need = {"uniform": ("range_ratio",), "lognormal": ("sd",), "empirical": ("source",)}
        allowed = {"fixed": (), "uniform": ("range_ratio",), "lognormal": ("sd", "min", "max"),
                   "empirical": ("source", "min", "max")}[self.dist]
        for f in need.get(self.dist, ()):
            if getattr(self, f) is None:
                raise ValueError(f"dist: {self.dist} needs '{f}'")
        extra = [f for f in ("range_ratio", "sd", "min", "max", "source")
                 if getattr(self, f) is not None and f not in allowed]
        if extra:
            raise ValueError(f"dist: {self.dist} takes no {', '.join(extra)} (it takes: "
                             f"{', '.join(allowed) or 'nothing else'})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max})")
        return self

    @property
    def varies(self) -> bool:
        """Whether requests differ in length."""
        return self.dist != "fixed"


class TrafficSpec(SpecModel):
    """A rate sweep per workload, the way GuideLLM's ``sweep`` profile works.

    For every variant: a synchronous point (one request in flight), a throughput point (all
    requests at once: the saturation rate), then requests arriving at ``rates`` (Poisson, or
    gamma with ``burstiness`` < 1) from low to high, stopping after the first rate whose
    steady-state window shows a growing queue. Capacity at the SLO is read between the rates.
    """

    workloads: tuple[str, ...] | None = Field(
        None, min_length=1, description="workloads that get a rate sweep (default: all).")
    rates: tuple[float, ...] | None = Field(
        None, min_length=1,
        description="arrival rates in req/s; None: num_rates rates spread between the "
        "synchronous rate and headroom x the saturation rate of the study's first variant "
        "measured (every variant then runs the same rates, with the same prompts).")
    num_rates: PosInt = Field(4, le=12, description="rates of an automatic sweep.")
    headroom: float = Field(
        1.3, ge=1, le=4,
        description="automatic sweep: the top rate is this x the first variant's saturation "
        "rate (a faster variant then still meets a rate it cannot sustain).")
    extend: int = Field(
        0, ge=0, le=8,
        description="when every rate of a variant's sweep passes (sustained, within the SLO), "
        "up to this many more rates one grid step apart, each measured only while the one "
        "before it passed (the same extra rates and prompts for every variant that needs "
        "them); 0: the capacity of such a variant is only 'at least the top rate'.")
    refine: int = Field(
        0, ge=0, le=6,
        description="when a variant's sweep ends at a failing rate (saturated, or missing a "
        "limit) above a passing one, up to this many more rates, each at the midpoint of the "
        "bracket between the last passing and the first failing rate (a bisection per "
        "variant, fresh prompts at each rate); each halves the range the capacity is known "
        "to; 0: it is read between the grid's rates only.")
    burstiness: float = Field(
        1.0, gt=0, description="arrival process: 1 = Poisson; < 1 burstier (gamma "
        "inter-arrival times, vLLM's --burstiness); > 1 more regular.")
    duration_s: float = Field(
        30.0, gt=0, description="shortest sending span of one rate point's trial: requests = "
        "rate x max(duration_s, fills x the fill time) (at least min_requests).")
    fills: float = Field(
        2.5, ge=0, le=10, description="each rate point's trial sends for at least this many "
        "fill times: the longest E2E latency of the throughput point of the variant the rates "
        "were set from (a server that starts empty takes that long to fill; only after it "
        "is the achieved rate judged, and a rate that met the SLO without that judgement "
        "does not count as sustained); 0: duration_s alone.")
    min_requests: PosInt = Field(24, description="fewest requests of one rate point's trial.")
    max_requests: PosInt = Field(2000, description="most requests of one rate point's trial.")
    sync_requests: PosInt = Field(8, description="requests of the synchronous point's trial.")
    throughput_requests: PosInt | None = Field(
        None, description="requests of the throughput point's trial, max_concurrency in "
        "flight (None: 4 x max_concurrency, at least min_requests; never fewer than "
        "THROUGHPUT_WAVES x max_concurrency: one wave's requests start together and the "
        "wave ends with its longest, so its rate understates the saturation rate).")
    max_concurrency: PosInt = Field(
        256, description="client-side cap on requests in flight at a rate point and the "
        "throughput point's concurrency (vLLM's --max-concurrency).")
    warmup_pct: float = Field(
        10.0, ge=0, lt=50, description="leading share of a trial left out of its steady-state "
        "window (by request count or by sending time, see window_by).")
    cooldown_pct: float = Field(
        10.0, ge=0, lt=50, description="trailing share of a trial left out of its window.")
    window_by: Literal["requests", "time"] = Field(
        "requests", description="requests: the first/last shares of requests in sending "
        "order; time: requests sent in the first/last shares of the sending span.")
    trials: PosInt | None = Field(
        None, description="trials per rate point (None: latency.trials' default).")

    @model_validator(mode="after")
    def _rates(self) -> TrafficSpec:
        if self.rates is not None:
            if any(not (r > 0) or math.isinf(r) for r in self.rates):
                raise ValueError("traffic.rates must be finite and > 0 (req/s)")
            if list(self.rates) != sorted(set(self.rates)):
                raise ValueError("traffic.rates must be increasing, without repeats")
        if self.warmup_pct + self.cooldown_pct >= 80:
            raise ValueError("warmup_pct + cooldown_pct leave under 20% of a trial to measure")
        return self

    def trial_s(self, fill_s: float = 0.0) -> float:
        """Sending span of a rate point's trial: ``max(duration_s, fills x fill_s)``."""
        fill = float(fill_s) if math.isfinite(float(fill_s)) and fill_s > 0 else 0.0
        return max(self.duration_s, self.fills * fill)

    def requests_at(self, rate: float, fill_s: float = 0.0) -> int:
        """Requests of one trial at ``rate`` (``fill_s``: the sweep's fill time, s)."""
        return int(min(self.max_requests, max(self.min_requests,
                                              math.ceil(rate * self.trial_s(fill_s)))))

    def throughput_n(self) -> int:
        """Requests of the throughput point's trial: at least ``THROUGHPUT_WAVES`` waves of
        ``max_concurrency``."""
        if self.throughput_requests is not None:
            return max(self.throughput_requests, THROUGHPUT_WAVES * self.max_concurrency)
        return max(self.min_requests, 4 * self.max_concurrency)


def load_label(request_rate: float, *, lengths_vary: bool, burstiness: float = 1.0) -> str:
    """The load pattern of a server point, as records and figures label it.

    ``burst``: closed loop over identical requests (they start and finish together, wave
    after wave); ``closed``: closed loop with varying lengths (c in flight); ``poisson`` /
    ``gamma``: requests arriving at a rate.
    """
    if math.isinf(request_rate):
        return "closed" if lengths_vary else "burst"
    return "poisson" if burstiness == 1.0 else "gamma"


#: A closed loop over a request mix sends at least this many waves per trial: with one wave
#: all its requests start together (a burst, whatever their lengths); over several, their
#: different lengths desynchronize the waves.
CLOSED_LOOP_WAVES = 4

#: The throughput point of a rate sweep sends at least this many waves of max_concurrency
#: requests per trial. A single wave's requests start together and the wave lasts as long as
#: its longest request, so its request rate understates the saturation rate that an automatic
#: sweep spreads its rates up to (measured on an H100: 64 chat requests at concurrency 64 gave
#: 10.1 req/s, and W4A16 then met the SLO at every rate up to 1.3 x that).
THROUGHPUT_WAVES = 2


def effective_load(load: str, concurrency: int, request_rate: float,
                   requests_per_trial: int | None) -> str:
    """A closed-loop point that sent no more requests per trial than its concurrency was one
    wave: all its requests started at once, so it is a ``burst`` whatever their lengths."""
    if (load == "closed" and math.isinf(request_rate) and requests_per_trial is not None
            and requests_per_trial <= concurrency):
        return "burst"
    return load


def extension_rates(rates: list[float] | tuple[float, ...], n: int) -> list[float]:
    """``n`` rates continuing ``rates`` past its top, one grid step (its last spacing, or the
    top rate itself for a single rate) apart, 3 significant digits."""
    if not rates or n <= 0:
        return []
    top = float(rates[-1])
    step = top - float(rates[-2]) if len(rates) >= 2 else top
    out: list[float] = []
    for k in range(1, n + 1):
        r = float(f"{top + step * k:.3g}")
        if r > (out[-1] if out else top):
            out.append(r)
    return out


def bisect_rate(lo: float, hi: float) -> float | None:
    """The midpoint of the bracket ``[lo, hi)`` to 3 significant digits, or None when that
    rounding leaves it no longer strictly inside (the bracket is as fine as rates are
    written)."""
    mid = float(f"{(float(lo) + float(hi)) / 2:.3g}")
    return mid if lo < mid < hi else None


def auto_rates(sync_rate: float, saturation_rate: float, n: int, headroom: float) -> list[float]:
    """``n`` rates spread evenly above ``sync_rate`` up to ``headroom x saturation_rate``
    (3 significant digits, increasing, no repeats)."""
    lo, hi = float(sync_rate), float(saturation_rate) * headroom
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"cannot spread rates between {lo} and {hi} req/s")
    if hi <= lo:
        hi = lo * 2
    step = (hi - lo) / n
    out: list[float] = []
    for i in range(1, n + 1):
        r = float(f"{lo + step * i:.3g}")
        if r > 0 and (not out or r > out[-1]):
            out.append(r)
    return out
