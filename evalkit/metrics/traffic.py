"""Rate sweeps, pure: steady-state window, over-saturation, capacity at an SLO, and cost.

A rate point loads the server with requests arriving at an offered rate (Poisson); per request
we know its send time, TTFT, TPOT, E2E latency and whether it failed.

* The steady-state window (:func:`steady_window`) leaves out the warm-up (the queue fills)
  and the cool-down (it drains).
* A point is saturated (:func:`flow`) when its queue grows through the window, or when its
  requests wait in the client for its cap on requests in flight (:func:`held_sends`). Its
  latency percentiles then depend on how long the trial ran, not on the rate, so a saturated
  point never counts as meeting an SLO. A trial too short for the server to fill is not
  judged, and a rate met only in such trials does not count as sustained.
* Capacity at an SLO (:func:`capacity_at_slo`) is the highest offered rate whose p90 TTFT and
  p90 TPOT (and E2E, if limited) meet their limits: ``margin = max_m pct(m) / limit(m)``,
  linearly interpolated in rate where it first crosses 1, with a percentile bootstrap
  interval over requests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from evalkit.core.errors import StageError

#: Saturated when the achieved completion rate is below this fraction of the arrival rate:
#: the server completes requests slower than they arrive, so the queue grows. With few
#: requests the two rates are noisy (each a count of about Poisson variance), so the fraction
#: is lowered to ``1 - 2 x sqrt(2 / k)`` when that is smaller (k: window arrivals counted): two
#: standard deviations of the ratio of two rate estimates of k events.
ACHIEVED_MIN = 0.9
#: The achieved-rate test counts completions only once the server has filled: from the
#: trial's first send plus the longest time in service (E2E less TTFT) of the window's
#: requests (before that, a stream that starts on an empty server completes fewer requests
#: than arrive, whatever the load: a 6 s trial of a chat mix on an H100, bf16 at 13.1 req/s,
#: read 0.56 x its arrival rate with a flat 112 ms p90 TTFT; on a CPU a 7 s window of 7.5 s
#: requests read 0.24 req/s at 1.6 req/s). The test needs at least this many window arrivals
#: in that counted span.
FLOW_MIN_ARRIVALS = 12
#: Saturated when the median TTFT of the last third of the (ok) requests sent after the fill
#: exceeds this multiple of the first third's: waiting time grows with the queue.
TTFT_GROWTH = 2.0
#: ...and the growth is also larger than this many ms (a 2x growth of a 10 ms TTFT is noise).
TTFT_GROWTH_MIN_MS = 50.0
#: The TTFT test needs at least this many ok requests in the window (four per third: the
#: median of two is a single slow request, which one busy core on a CPU host produces).
TTFT_GROWTH_MIN_REQUESTS = 12
#: ...and the TTFTs rise through those requests: a one-sided Mann-Kendall trend test
#: (:func:`rising_p`) below this p-value. A queue that grows raises every later TTFT; two
#: requests that arrive together on a busy host raise two (a CPU rate point at 1 req/s read
#: "93 ms to 213 ms" from thirds of four requests, its last two at 128 and 83 ms again).
TTFT_TREND_P = 0.01
#: Saturated when more than this percentage of the window's requests failed.
FAILED_MAX_PCT = 5.0
#: Saturated when, with a client-side cap on requests in flight, at least this percentage of
#: the window's requests waited in the client for a free slot (:func:`held_sends`). Their
#: TTFT is timed from the send and hides that wait, so once more than 100 - 90 % of requests
#: waited, the p90 no longer speaks for what a user saw. (A 6 s chat trial on an H100 at
#: 21.5 req/s, bf16: 32 of 105 window sends waited at the cap of 64 while the p90 TTFT
#: stayed at 144 ms; 40 s at that rate completed only 15.5 req/s.)
HELD_MAX_PCT = 10.0
#: A send is held when the cap was full until at most this long before it: vLLM's client
#: sends a waiting request as soon as a completion frees its semaphore (measured on an H100
#: host: 0.1-0.4 ms after the completion).
HOLD_SLACK_S = 0.02


@dataclass(frozen=True)
class Window:
    """The steady-state window of one trial."""

    mask: np.ndarray  #: bool per request (input order): inside the window
    start_s: float  #: first send inside the window, seconds from the trial's first send
    end_s: float  #: last send inside the window, same origin
    n: int  #: requests inside
    how: str  #: how it was cut, in words


def steady_window(start_s: Sequence[float], *, warmup_pct: float, cooldown_pct: float,
                  by: Literal["requests", "time"]) -> Window:
    """The requests of a trial's steady state.

    by ``"requests"``: drop the first ``floor(n * warmup / 100)`` and the last
    ``floor(n * cooldown / 100)`` requests in sending order. By ``"time"``: with
    ``span = last send - first send``, keep requests sent in
    ``[first + span * warmup / 100, last - span * cooldown / 100]``. At least one request is
    always kept: an empty window keeps the middle request by sending order.

    Args:
        start_s: send time per request, any origin and order (the mask follows the input).
        warmup_pct, cooldown_pct: shares left out at the start and the end, in [0, 100).
        by: cut by request count or by sending time.
    """
    t = np.asarray(start_s, dtype=float).ravel()
    n = t.size
    if n == 0 or not np.isfinite(t).all():
        raise StageError(f"steady window needs finite send times, got {n} value(s)")
    if not (0 <= warmup_pct < 100 and 0 <= cooldown_pct < 100):
        raise StageError(f"warm-up/cool-down must be in [0, 100) %: {warmup_pct}, {cooldown_pct}")
    order = np.argsort(t, kind="stable")
    ts = t[order]
    span = ts[-1] - ts[0]
    if by == "requests":
        keep = np.zeros(n, dtype=bool)
        keep[math.floor(n * warmup_pct / 100):n - math.floor(n * cooldown_pct / 100)] = True
    elif by == "time":
        keep = (ts >= ts[0] + span * warmup_pct / 100) & (ts <= ts[-1] - span * cooldown_pct / 100)
    else:
        raise StageError(f"steady window by {by!r}: use 'requests' or 'time'")
    if empty := not keep.any():
        keep[(n - 1) // 2] = True
    mask = np.zeros(n, dtype=bool)
    mask[order] = keep
    idx = np.flatnonzero(keep)
    start, end = float(ts[idx[0]] - ts[0]), float(ts[idx[-1]] - ts[0])
    label = f"{warmup_pct:g}% warm-up, {cooldown_pct:g}% cool-down left out"
    if by == "requests":
        how = f"requests {idx[0]}..{idx[-1]} of {n} by sending order ({label})"  # 0-based
    else:
        how = (f"{idx.size} of {n} requests sent {start:.4g}..{end:.4g} s of a {span:.4g} s "
               f"sending span ({label})")
    if empty:
        how += "; the window was empty, the middle request is kept"
    return Window(mask=mask, start_s=start, end_s=end, n=int(idx.size), how=how)


@dataclass(frozen=True)
class Flow:
    """Arrivals against completions inside a window, and whether the queue grows."""

    arrival_rate_req_s: float  #: (n - 1) / sending span of the window; NaN if n < 2 or span 0
    achieved_rate_req_s: float  #: completions in the window's span after the fill / that span
    failed: int  #: failed requests inside the window
    saturated: bool
    reason: str  #: '' when not saturated, else why (with the numbers)
    #: whether the achieved rate was tested (enough window arrivals once the server filled)
    flow_judged: bool = True
    #: window requests that waited in the client for its in-flight cap (0 without a cap)
    held: int = 0


def held_sends(start_s: Sequence[float], latency_s: Sequence[float], cap: int,
               slack_s: float = HOLD_SLACK_S) -> np.ndarray:
    """Per request (input order): whether it waited in the client for a free slot under a cap
    of ``cap`` requests in flight: ``cap`` earlier requests were in flight until at most
    ``slack_s`` before its send (it left the moment one of them completed). A request
    without a latency (a failure) is not counted as in flight.

    A request that arrives while fewer than ``cap`` are in flight is sent at once: at its
    send at most ``cap - 1`` others are in flight, none of them finishing just before.
    """
    t = np.asarray(start_s, dtype=float).ravel()
    lat = np.asarray(latency_s, dtype=float).ravel()
    if t.size != lat.size:
        raise StageError(f"held_sends: {t.size} send times for {lat.size} latencies")
    end = np.where(np.isfinite(lat), t + lat, -np.inf)
    order = np.argsort(t, kind="stable")
    ts, es = t[order], end[order]
    busy = np.array([int((es[:i] > ts[i] - slack_s).sum()) for i in range(ts.size)], dtype=int)
    out = np.zeros(t.size, dtype=bool)
    out[order] = busy >= cap
    return out


def rising_p(values: Sequence[float]) -> float:
    """One-sided p-value that ``values`` (in order) rise: the Mann-Kendall test, ``S`` = sum
    of sign(x_j - x_i) over i < j, normal approximation with continuity correction and no
    tie correction (``var = n (n - 1) (2n + 5) / 18``). 1.0 for fewer than 3 values."""
    x = np.asarray(values, dtype=float).ravel()
    n = x.size
    if n < 3:
        return 1.0
    i, j = np.triu_indices(n, 1)
    stat = float(np.sign(x[j] - x[i]).sum())
    z = (stat - 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18) if stat > 0 else 0.0
    return 0.5 * math.erfc(z / math.sqrt(2))


def _rate(times: np.ndarray) -> float:
    times = times[np.isfinite(times)]
    span = float(times.max() - times.min()) if times.size else 0.0
    return (times.size - 1) / span if times.size >= 2 and span > 0 else math.nan


def flow(start_s: Sequence[float], latency_s: Sequence[float], ttft_s: Sequence[float],
         ok: Sequence[bool], window: Window, offered_rate: float | None = None,
         max_in_flight: int | None = None) -> Flow:
    """Arrival and completion rates of a window, and the saturation verdict.

    ``arrival = (n - 1) / (last send - first send)`` over the window's n requests;
    ``achieved`` = completions (send + latency) of any of the trial's ok requests inside the
    window's sending interval once the server has filled (from the trial's first send plus
    the longest time in service, E2E less TTFT, of the window's ok requests), per second of
    that span; the whole
    sending interval when fewer than ``FLOW_MIN_ARRIVALS`` window requests are sent after the
    fill (then it is not judged). In a steady state as
    many requests finish per second as arrive, whatever the latency distribution; a growing
    queue finishes at the service rate. (A rate from the completion span of the window's own
    requests is biased by the latency spread: with outputs of 16 to 1024 tokens, a stable
    stream at 90 % of its saturation rate on an H100 read 0.7 x its arrival rate.)

    Saturated if any of: ``achieved < min(ACHIEVED_MIN, 1 - 2 sqrt(2/k)) x arrival``
    (the noise allowance for k window arrivals in the counted span), judged only when k is
    at least ``FLOW_MIN_ARRIVALS``; more than ``FAILED_MAX_PCT``
    % of the window failed; TTFT grows: with at least ``TTFT_GROWTH_MIN_REQUESTS`` ok
    requests sent after the fill (all the window's when the trial is not judged) split in
    sending-order thirds, ``median(last) > TTFT_GROWTH x median(first)``,
    ``median(last) - median(first) > TTFT_GROWTH_MIN_MS`` and the TTFTs rise in sending
    order (:func:`rising_p` < ``TTFT_TREND_P``). (Before the fill TTFT rises with
    the batch whatever the load: an 11 s RAG trial on an H100, W4A16 at 12.3 req/s, read
    "93 ms to 201 ms" over its window's thirds, while its requests sent after the fill, at
    5.7 s, went from 176 to 136 ms and completions kept pace with arrivals.) The fill is the
    longest time in service, E2E less TTFT, of the window's requests: a TTFT holds the wait
    in a queue, which would stretch a growing queue's "fill" over most of its trial.

    Args:
        start_s, latency_s, ttft_s, ok: per request, seconds, the window's input order;
            latency and TTFT may be NaN for failed requests.
        window: from :func:`steady_window` on the same requests.
        offered_rate: the rate the client was asked for (req/s). Send times are taken when
            a request leaves the client, after its in-flight cap: when the server cannot keep
            up and the cap is reached, requests wait in the client and the window's arrival
            rate falls below the offered one. Saturated then too, when the arrival rate is
            under ``min(ACHIEVED_MIN, 1 - 3 / sqrt(n)) x offered`` (3 standard deviations of
            a Poisson count of n arrivals).
        max_in_flight: the client's cap on requests in flight (vLLM's ``--max-concurrency``),
            None without one. Saturated when at least ``HELD_MAX_PCT`` % of the window's
            requests waited in the client for it (:func:`held_sends`): their wait is not in
            their TTFT, so the window's percentiles no longer describe the load offered.
            This test needs no fill: a trial of any length shows it.
    """
    mask = np.asarray(window.mask, dtype=bool)
    cols = [np.asarray(column, dtype=float).ravel() for column in (start_s, latency_s, ttft_s)]
    good = np.asarray(ok, dtype=bool).ravel()
    if any(column.size != mask.size for column in (*cols, good)):
        raise StageError(f"flow needs one value per request of the window ({mask.size}), got "
                         f"{[column.size for column in (*cols, good)]}")
    order = np.argsort(cols[0], kind="stable")
    keep = mask[order]
    send, lat, ttft, good = (column[order][keep] for column in (*cols, good))
    arrival = _rate(send)
    # completions of any of the trial's requests inside the window's sending interval: in a
    # steady state as many finish per second as arrive, whatever the latency distribution
    all_send, all_lat = cols[0][order], cols[1][order]
    all_ok = np.asarray(ok, dtype=bool).ravel()[order]
    done_at = (all_send + all_lat)[all_ok & np.isfinite(all_lat)]
    t0, t1 = (float(send.min()), float(send.max())) if send.size else (0.0, 0.0)
    # the server starts empty: count completions once the window's longest request, sent
    # with the trial's first, would have finished. Its length is its time in service, E2E
    # less TTFT (the TTFT holds any wait in the queue: a queue that grows would otherwise
    # stretch the "fill" over most of the trial and hide itself)
    served = np.where(np.isfinite(ttft), lat - ttft, lat)
    lats = served[good & np.isfinite(served)]
    filled = max(t0, float(np.nanmin(all_send)) + float(lats.max())) if lats.size else t1
    counted = int(((send >= filled) & (send <= t1)).sum()) if filled < t1 else 0
    if counted < FLOW_MIN_ARRIVALS:
        filled = t0  # too little left after the fill: the rate over the window, not judged
    achieved = (float(((done_at >= filled) & (done_at <= t1)).sum()) / (t1 - filled)
                if t1 > filled else math.nan)
    failed = int((~good).sum())
    reasons = []
    n_sent = int(send.size)
    if offered_rate is not None and n_sent >= 2 and math.isfinite(arrival):
        cut_in = min(ACHIEVED_MIN, 1.0 - 3.0 / math.sqrt(n_sent))
        if arrival < cut_in * offered_rate:
            reasons.append(f"requests left the client at {arrival:.3g} req/s < {cut_in:.2g} "
                           f"x offered {offered_rate:.3g} req/s (they waited for the in-flight "
                           "cap or the client)")
    cut = min(ACHIEVED_MIN, 1.0 - 2.0 * math.sqrt(2.0 / counted)) if counted else ACHIEVED_MIN
    if counted >= FLOW_MIN_ARRIVALS and achieved < cut * arrival:
        reasons.append(f"achieved {achieved:.3g} req/s < {cut:.2g} x arrival "
                       f"{arrival:.3g} req/s")
    held = 0
    if max_in_flight is not None and send.size:
        held = int(held_sends(cols[0], cols[1], int(max_in_flight))[mask].sum())
        if held / send.size * 100 >= HELD_MAX_PCT:
            reasons.append(f"{held} of {send.size} window requests waited in the client for "
                           f"its cap of {int(max_in_flight)} in flight (>= {HELD_MAX_PCT:g}%: "
                           "their TTFT, timed from the send, hides the wait)")
    if send.size and failed / send.size * 100 > FAILED_MAX_PCT:
        reasons.append(f"{failed} of {send.size} window requests failed "
                       f"({failed / send.size:.1%} > {FAILED_MAX_PCT:g}%)")
    # TTFT rises while an empty server fills (its batch grows to the load's), whatever the
    # load: only requests sent once it has filled show a queue that keeps growing
    tt = ttft[good & np.isfinite(ttft) & (send >= filled)]
    if tt.size >= TTFT_GROWTH_MIN_REQUESTS:
        third = tt.size // 3
        first, last = float(np.median(tt[:third])), float(np.median(tt[-third:]))
        if (last > TTFT_GROWTH * first and (last - first) * 1e3 > TTFT_GROWTH_MIN_MS
                and (p := rising_p(tt)) < TTFT_TREND_P):
            after = " after the fill" if filled > t0 else ""
            reasons.append(f"median TTFT{after} grows from {first * 1e3:.4g} ms (first "
                           f"third) to {last * 1e3:.4g} ms (last third), rising through "
                           f"the window (Mann-Kendall p = {p:.2g})")
    return Flow(arrival_rate_req_s=arrival, achieved_rate_req_s=achieved, failed=failed,
                saturated=bool(reasons), reason="; ".join(reasons),
                flow_judged=counted >= FLOW_MIN_ARRIVALS, held=held)


def slo_values(values: Sequence[float], ok: Sequence[bool]) -> np.ndarray:
    """Per-request values with ``+inf`` for failed requests: a failure misses every SLO."""
    v, good = np.asarray(values, dtype=float).ravel(), np.asarray(ok, dtype=bool).ravel()
    if v.size != good.size:
        raise StageError(f"slo_values: {v.size} values for {good.size} ok flags")
    return np.where(good, v, np.inf)


def _percentile(x: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated percentile along the last axis (numpy's default), inf-safe.

    ``np.percentile`` returns NaN as soon as the sample holds an inf; here a percentile that
    falls on or interpolates towards an inf is inf, one on finite values is unchanged.
    """
    s = np.sort(x, axis=-1)
    h = (s.shape[-1] - 1) * q / 100
    lo, frac = math.floor(h), h - math.floor(h)
    a, b = s[..., lo], s[..., min(lo + 1, s.shape[-1] - 1)]
    if frac == 0:
        return a
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(b), np.inf, a + (b - a) * frac)


def _pooled(samples: Mapping[str, Sequence[Sequence[float]]], limits: Mapping[str, float]
            ) -> dict[str, list[np.ndarray]]:
    out = {}
    for metric, limit in limits.items():
        if not limit > 0:
            raise StageError(f"SLO limit of {metric} must be > 0, got {limit}")
        parts = [np.asarray(p, dtype=float).ravel() for p in samples.get(metric, ())]
        parts = [p[~np.isnan(p)] for p in parts]
        if any(p.size for p in parts):
            out[metric] = [p for p in parts if p.size]
    if not out:
        raise StageError(f"no values for any SLO metric {sorted(limits)} (have "
                         f"{sorted(samples)})")
    return out


def slo_margin(samples: Mapping[str, Sequence[Sequence[float]]], limits: Mapping[str, float],
               percentile: float) -> float:
    """``max_m percentile(pooled values of m) / limit(m)`` over the limited metrics present.

    <= 1 meets every limit. Infs (failed requests) take part: a percentile that falls on one
    is inf. NaN values (TPOT of 1-token outputs) are dropped; metrics limited but not in
    ``samples`` are ignored, and none present is an error.
    """
    pooled = _pooled(samples, limits)
    return max(float(_percentile(np.concatenate(p), percentile)) / limits[m]
               for m, p in pooled.items())


@dataclass(frozen=True)
class RatePoint:
    """One offered rate of a sweep: its saturation verdict and its window values in ms."""

    rate: float  #: offered rate, req/s (finite, > 0)
    saturated: bool
    samples: Mapping[str, Sequence[Sequence[float]]]  #: metric -> per-trial values (+inf failed)
    #: whether its trials were long enough to judge the flow (:attr:`Flow.flow_judged`): a
    #: point that met the SLO without that shows only the server's fill, not that it keeps up
    judged: bool = True


@dataclass(frozen=True)
class Capacity:
    """Capacity at an SLO, req/s, with its bootstrap interval and draws."""

    value: float  #: NaN when below the lowest rate or unjudged
    ci_low: float
    ci_high: float
    #: above: capacity >= the top rate judged (value = that rate); unjudged: the lowest rate
    #: met the SLO in a trial too short to judge the flow, so nothing is known (NaN)
    censored: Literal["none", "above", "below", "unjudged"]
    passing: tuple[float, ...]  #: rates that met the SLO (not saturated, all limits met)
    first_failing: float | None
    draws: np.ndarray  #: bootstrap draws (NaN = below the lowest rate), paired by index
    note: str  #: how it was read, one sentence


def _crossing(rates: np.ndarray, sat: np.ndarray, margins: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Capacity per row of ``margins`` (draws x points); NaN below the lowest rate. Also, per
    row, the first failing rate where it is saturated or its margin infinite (NaN elsewhere):
    the capacity then only lies somewhere in [last passing rate, that rate)."""
    passes = ~sat & (margins <= 1)
    f = np.where(passes.all(axis=1), rates.size, np.argmin(passes, axis=1))
    out = np.full(margins.shape[0], rates[-1])
    upper = np.full(margins.shape[0], np.nan)
    mid = (f > 0) & (f < rates.size)
    out[f == 0] = np.nan
    i = f[mid]
    m_lo, m_hi = margins[mid, i - 1], margins[mid, i]
    r_lo, r_hi = rates[i - 1], rates[i]
    with np.errstate(invalid="ignore"):
        interp = r_lo + (1 - m_lo) * (r_hi - r_lo) / (m_hi - m_lo)
    unresolved = sat[i] | np.isinf(m_hi)
    out[mid] = np.where(unresolved, r_lo, interp)
    upper[mid] = np.where(unresolved, r_hi, np.nan)
    return out, upper


def _misses(point: RatePoint, limits: Mapping[str, float], q: float) -> str:
    """The limits a point misses, in words ("p90 TTFT 1450 ms > 1000 ms"), or "saturated"."""
    vals = {m: float(_percentile(np.concatenate(p), q)) for m, p in
            _pooled(point.samples, limits).items()}
    return ", ".join(f"p{q:g} {m.removesuffix('_ms').upper()} {v:.4g} ms > {limits[m]:.4g} ms"
                     for m, v in vals.items() if v > limits[m]) or "saturated"


def capacity_at_slo(points: Sequence[RatePoint], limits: Mapping[str, float], *,
                    percentile: float = 90.0, resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0, bracket_seed: int | None = None) -> Capacity:
    """Highest offered rate whose ``percentile`` of each limited metric meets its limit.

    A point passes when it is not saturated and its :func:`slo_margin` is <= 1. Walking up
    the sorted rates, the first failing rate ends the search (higher rates are ignored, even
    if they pass). Capacity is read between the last passing rate ``r0`` (margin ``m0``) and
    the first failing ``r1`` (``m1``) by linear interpolation, ``r0 + (1 - m0) (r1 - r0) /
    (m1 - m0)``; when ``r1`` is saturated or its margin is inf (it falls on failed requests)
    nothing above the last sustainable rate is claimed and capacity is ``r0``. Censored
    ``above`` (every rate passes): value = top rate. ``below`` (the lowest rate fails): NaN.

    Interval: percentile bootstrap. Each resample redraws every point's per-trial values with
    replacement within each trial, recomputes the margins and the crossing (saturation flags
    stay as measured); where the crossing meets a saturated rate ``r1``, the draw is uniform
    in ``[r0, r1)`` (the capacity is known only to that resolution). Draws below the lowest
    rate are NaN and count as 0 req/s in the quantiles; draws above count as the top rate.
    The value's own end of that bracket is always inside the interval. The uniform draws come
    from a stream of their own, ``bracket_seed`` (default ``seed``): give each variant its own,
    because nothing ties where two capacities lie inside their brackets, and draws from one
    stream would put them at the same place (a gain of exactly 0 with no width between two
    variants known only to ``[16, 20)``).

    A point whose trials were too short to judge the flow (``judged`` False) and that met the
    SLO proves nothing about the steady state: the walk stops before it, and capacity is at
    least the last rate below it that passed (censored ``above`` there), or ``unjudged``
    (NaN) when it is the lowest rate. Such a point that is saturated or misses a limit still
    fails (its queue already grew, or its latency is already too high).
    """
    if not points or resamples < 1 or not 0 < confidence < 1 or not 0 <= percentile <= 100:
        raise StageError(f"capacity at SLO: {len(points)} rate point(s), resamples {resamples}, "
                         f"confidence {confidence}, percentile {percentile}")
    pts = sorted(points, key=lambda point: point.rate)
    rates = np.asarray([point.rate for point in pts], dtype=float)
    if not (np.isfinite(rates).all() and (rates > 0).all() and (np.diff(rates) > 0).all()):
        raise StageError(f"rates must be finite, > 0 and distinct, got {rates.tolist()}")
    sat = np.asarray([bool(point.saturated) for point in pts])
    margins = np.asarray([slo_margin(point.samples, limits, percentile) for point in pts])
    passes = ~sat & (margins <= 1)
    first_fail = int(np.argmin(passes)) if not passes.all() else None
    walked = passes.size if first_fail is None else first_fail
    if (k := next((i for i in range(walked) if not pts[i].judged), None)) is not None:
        why = (f"{pts[k].rate:g} req/s met the p{percentile:g} limits in trials shorter than "
               "the server's fill (the achieved rate not judged): that shows no steady state")
        if k == 0:
            return Capacity(value=math.nan, ci_low=math.nan, ci_high=math.nan,
                            censored="unjudged", passing=(), first_failing=None,
                            draws=np.full(resamples, np.nan),
                            note=f"not established: the lowest rate {why}")
        cap = capacity_at_slo(pts[:k], limits, percentile=percentile, resamples=resamples,
                              confidence=confidence, seed=seed, bracket_seed=bracket_seed)
        return dataclasses.replace(cap, note=f"{cap.note}; {why}, so it and the rates above "
                                             "are not counted")
    value = float(_crossing(rates, sat, margins[None, :])[0][0])
    passing = tuple(float(rate) for rate in rates[passes])
    rng = np.random.default_rng(seed)
    boot = np.empty((resamples, rates.size))
    for j, point in enumerate(pts):
        per_metric = []
        for metric, parts in _pooled(point.samples, limits).items():
            resampled = np.concatenate(
                [trial_values[rng.integers(0, trial_values.size,
                                           size=(resamples, trial_values.size))]
                 for trial_values in parts], axis=1)
            per_metric.append(_percentile(resampled, percentile) / limits[metric])
        boot[:, j] = np.max(per_metric, axis=0)
    draws, upper = _crossing(rates, sat, boot)
    # Where the first failing rate is saturated, no margin crosses 1 between the two rates:
    # the capacity is known only to lie in [last passing, failing) -- the sweep's resolution.
    # The value claims the lower end; the draws spread uniformly over the bracket, so the
    # interval (and a gain between variants) carries that resolution instead of hiding it.
    spread = np.isfinite(upper)
    bracket = np.random.default_rng([seed if bracket_seed is None else bracket_seed, 1])
    draws[spread] = bracket.uniform(draws[spread], upper[spread])
    alpha = 1 - confidence
    lo, hi = np.quantile(np.nan_to_num(draws, nan=0.0), [alpha / 2, 1 - alpha / 2])
    lo, hi = min(float(lo), value), max(float(hi), value)  # the claimed value is an end
    censored = "above" if first_fail is None else "below" if first_fail == 0 else "none"
    if first_fail is None:
        note = (f"every rate met the p{percentile:g} limits (up to {rates[-1]:g} req/s): "
                f"capacity is at least the top rate measured")
    elif first_fail == 0:
        lo = hi = math.nan
        note = (f"the lowest rate {rates[0]:g} req/s already fails "
                f"({'saturated' if sat[0] else _misses(pts[0], limits, percentile)}): "
                f"capacity is below the lowest rate measured")
    else:
        r0, r1 = rates[first_fail - 1], rates[first_fail]
        if sat[first_fail] or math.isinf(margins[first_fail]):
            why = ("is saturated" if sat[first_fail]
                   else f"has {_misses(pts[first_fail], limits, percentile)}")
            note = (f"last passing rate {r0:g} req/s: {r1:g} req/s {why}, not sustainable, so "
                    f"nothing above {r0:g} req/s is claimed (capacity lies in [{r0:g}, {r1:g})"
                    " req/s: the interval spans the rates' resolution)")
        else:
            note = (f"interpolated between {r0:g} (meets p{percentile:g} limits) and {r1:g} "
                    f"req/s ({_misses(pts[first_fail], limits, percentile)})")
        if above := [f"{rate:g}" for rate in passing if rate > r1]:
            note += f"; higher rates {', '.join(above)} req/s pass again but are ignored"
    return Capacity(value=value, ci_low=float(lo), ci_high=float(hi), censored=censored,
                    passing=passing,
                    first_failing=None if first_fail is None else float(rates[first_fail]),
                    draws=draws, note=note)


def gain_from_draws(value: float, ref_value: float, draws: Sequence[float],
                    ref_draws: Sequence[float], *, confidence: float = 0.95
                    ) -> tuple[float, float, float]:
    """``(gain_pct, lo, hi)``: ``(value / ref_value - 1) x 100`` with the percentile interval
    of the index-paired draw ratios ``(d_i / ref_d_i - 1) x 100``.

    Draw ``i`` of each side is one bootstrap resample of that side's own requests; two
    variants of one run resampled with one seed over the same prompts pair request for
    request, and their draws over a saturated bracket are independent (see
    :func:`capacity_at_slo`'s ``bracket_seed``). Draws below the lowest rate (NaN) count as 0 req/s (as
    in :func:`capacity_at_slo`); a reference draw of 0 gives an infinite gain (or none,
    dropped, when the other is 0 too). NaN triple when either value is NaN or the reference is
    0; NaN interval without draws.
    """
    if math.isnan(value) or math.isnan(ref_value) or ref_value == 0:
        return math.nan, math.nan, math.nan
    gain = (value / ref_value - 1) * 100
    v = np.nan_to_num(np.asarray(draws, dtype=float), nan=0.0)
    r = np.nan_to_num(np.asarray(ref_draws, dtype=float), nan=0.0)
    if v.size != r.size:
        raise StageError(f"capacity gain needs as many draws on both sides: {v.size} vs {r.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (v / r - 1) * 100
    g, alpha = g[~np.isnan(g)], 1 - confidence
    if g.size == 0:
        return gain, math.nan, math.nan
    return gain, float(_percentile(g, alpha * 50)), float(_percentile(g, 100 - alpha * 50))


def capacity_gain(variant: Capacity, reference: Capacity, *, confidence: float = 0.95
                  ) -> tuple[float, float, float]:
    """``(gain_pct, lo, hi)`` of two capacities (:func:`gain_from_draws` on their values and
    draws; a capacity without draws is an error here)."""
    if min(np.asarray(variant.draws).size, np.asarray(reference.draws).size) == 0 and not (
            math.isnan(variant.value) or math.isnan(reference.value) or reference.value == 0):
        raise StageError("capacity gain needs bootstrap draws on both sides")
    return gain_from_draws(variant.value, reference.value, variant.draws, reference.draws,
                           confidence=confidence)


def cost_per_million_tokens(usd_per_gpu_hour: float, gpus: int, output_tok_s: float) -> float:
    """USD per million output tokens: ``usd_per_gpu_hour x gpus / 3600 / output_tok_s x 1e6``.

    NaN when the throughput is not > 0 (or NaN).
    """
    return usd_per_gpu_hour * gpus / 3600 / output_tok_s * 1e6 if output_tok_s > 0 else math.nan


def joules_per_token(energy_j: float, output_tokens: int) -> float:
    """Energy per output token, J: ``energy_j / output_tokens``; NaN when either is missing,
    the energy is negative or no token was produced."""
    ok = energy_j is not None and energy_j >= 0 and output_tokens is not None and output_tokens > 0
    return energy_j / output_tokens if ok else math.nan
