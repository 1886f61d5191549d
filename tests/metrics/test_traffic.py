"""Tests for evalkit.metrics.traffic on seeded synthetic rate sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evalkit.core.errors import StageError
from evalkit.metrics.traffic import (
    Capacity,
    RatePoint,
    capacity_at_slo,
    capacity_gain,
    cost_per_million_tokens,
    flow,
    held_sends,
    joules_per_token,
    rising_p,
    slo_margin,
    slo_values,
    steady_window,
)

LIMITS = {"ttft_ms": 1000.0, "tpot_ms": 50.0}


def poisson_sends(n: int, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1 / rate, n))


def fifo_queue(sends: np.ndarray, service_s: float) -> tuple[np.ndarray, np.ndarray]:
    """One server, first in first out: (latency, TTFT) per request, seconds."""
    free = -math.inf
    lat, ttft = np.empty(sends.size), np.empty(sends.size)
    for i, t in enumerate(sends):
        begin = max(t, free)
        free = begin + service_s
        ttft[i] = begin - t + 0.02
        lat[i] = free - t
    return lat, ttft


def const_point(rate: float, ttft: float, tpot: float, n: int = 20, saturated: bool = False,
                failed: int = 0) -> RatePoint:
    """A point whose every request has the same TTFT/TPOT (p90 known exactly), 2 trials."""
    ok = np.arange(n) >= failed
    t = slo_values(np.full(n, ttft), ok)
    p = slo_values(np.full(n, tpot), ok)
    return RatePoint(rate=rate, saturated=saturated,
                     samples={"ttft_ms": [t, t.copy()], "tpot_ms": [p, p.copy()]})


def model_point(rate: float, n: int, seed: int, scale: float = 200.0) -> RatePoint:
    """TTFT ~ scale x rate x lognormal(0, 0.5) ms: p90 = 379.6 x rate ms for scale 200."""
    rng = np.random.default_rng(seed)
    trials = [scale * rate * rng.lognormal(0, 0.5, n) for _ in range(2)]
    tpot = [np.full(n, 10.0), np.full(n, 10.0)]
    return RatePoint(rate=rate, saturated=False, samples={"ttft_ms": trials, "tpot_ms": tpot})


# ---------------------------------------------------------------- steady window


def test_window_by_requests_unsorted_input_keeps_mask_in_input_order():
    rng = np.random.default_rng(0)
    sends = 500.0 + np.arange(30) * 0.5
    perm = rng.permutation(30)
    w = steady_window(sends[perm], warmup_pct=10, cooldown_pct=10, by="requests")
    rank = np.argsort(np.argsort(sends[perm]))
    assert np.array_equal(w.mask, (rank >= 3) & (rank <= 26))
    assert w.n == 24 and "requests 3..26 of 30" in w.how
    assert w.start_s == pytest.approx(1.5) and w.end_s == pytest.approx(13.0)


def test_window_by_time_unsorted_input():
    rng = np.random.default_rng(1)
    sends = 1000.0 + rng.permutation(np.arange(101.0))  # one send per second, shuffled
    w = steady_window(sends, warmup_pct=20, cooldown_pct=10, by="time")
    assert np.array_equal(w.mask, (sends >= 1020) & (sends <= 1090))
    assert w.n == 71 and w.start_s == pytest.approx(20) and w.end_s == pytest.approx(90)


def test_window_never_empty_and_rejects_bad_input():
    w = steady_window([4.0, 0.0, 3.0, 1.0, 2.0], warmup_pct=60, cooldown_pct=50, by="requests")
    assert w.n == 1 and w.mask.tolist() == [False, False, False, False, True]
    assert "middle" in w.how
    with pytest.raises(StageError):
        steady_window([], warmup_pct=10, cooldown_pct=10, by="requests")
    with pytest.raises(StageError):
        steady_window([1.0, 2.0], warmup_pct=10, cooldown_pct=10, by="tokens")  # type: ignore[arg-type]


# ---------------------------------------------------------------- flow and saturation


def test_stable_stream_is_not_saturated_even_with_long_latencies():
    sends = poisson_sends(300, rate=2.0, seed=2)
    rng = np.random.default_rng(3)
    lat = 6.0 + rng.normal(0, 0.3, sends.size)  # many in flight, none waiting
    ttft = 0.08 + rng.normal(0, 0.01, sends.size)
    ok = np.ones(sends.size, bool)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, ttft, ok, w)
    assert not f.saturated and f.reason == "" and f.failed == 0
    assert f.arrival_rate_req_s == pytest.approx(2.0, rel=0.2)
    assert f.achieved_rate_req_s == pytest.approx(f.arrival_rate_req_s, rel=0.1)


def _chat_latencies(n: int, seed: int) -> np.ndarray:
    """E2E seconds of a chat mix on an H100 (bf16 at 13 req/s: median ~2.2 s, p90 ~5 s, up
    to ~8 s)."""
    return np.clip(np.random.default_rng(seed).lognormal(math.log(2.1), 0.65, n), 0.3, 8.0)


def test_a_stream_starting_on_an_empty_server_is_not_read_as_saturated():
    # a 6 s trial at 13 req/s whose requests take up to ~8 s: the server starts empty, so few
    # of them have completed while the window is sent; TTFT stays flat (no queue)
    sends = poisson_sends(79, rate=13.0, seed=15)
    lat, ttft = _chat_latencies(79, seed=16), np.full(79, 0.07)
    ok = np.ones(79, bool)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, ttft, ok, w)
    assert not f.saturated and not f.flow_judged
    # counted over the whole window (which spans over two median latencies) the completions
    # lag the arrivals by more than the noise allowance for its 63 requests (1 - 2 sqrt(2/63)
    # = 0.64): the reason the fill is waited out
    done = sends + lat
    t0, t1 = sends[w.mask].min(), sends[w.mask].max()
    assert t1 - t0 > 2 * np.median(lat[w.mask])
    assert ((done >= t0) & (done <= t1)).sum() / (t1 - t0) < 0.64 * f.arrival_rate_req_s
    # the same stream over 60 s is judged after the fill, and completes as fast as it arrives
    sends = poisson_sends(780, rate=13.0, seed=9)
    lat, ttft = _chat_latencies(780, seed=10), np.full(780, 0.07)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, ttft, np.ones(780, bool), w)
    assert f.flow_judged and not f.saturated
    assert f.achieved_rate_req_s == pytest.approx(f.arrival_rate_req_s, rel=0.1)


def capped_client(sends: np.ndarray, service_s: np.ndarray, cap: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A client with at most ``cap`` requests in flight on a server that serves each in
    ``service_s`` whatever the load: (send time after the cap, latency from that send)."""
    ends: list[float] = []
    out = np.empty(sends.size)
    for i, t in enumerate(sends):
        ends.sort()
        live = [e for e in ends if e > t]
        out[i] = t if len(live) < cap else live[len(live) - cap]  # wait for a completion
        ends = [e for e in ends if e > out[i]] + [out[i] + service_s[i]]
    return out, service_s.copy()


def test_held_sends_are_those_sent_as_a_full_cap_freed_a_slot():
    # cap 2: the third request leaves the moment the first completes (it waited); sent 0.5 s
    # after that completion, it would not have waited
    lat = np.array([1.0, 3.0, 1.0])
    assert held_sends([0.0, 0.1, 1.0], lat, 2).tolist() == [False, False, True]
    assert held_sends([0.0, 0.1, 1.5], lat, 2).tolist() == [False, False, False]
    assert held_sends([0.0, 0.1, 1.0], lat, 3).tolist() == [False, False, False]
    # input order is kept; a failed request (no latency) is not in flight
    assert held_sends([1.0, 0.1, 0.0], lat[::-1], 2).tolist() == [True, False, False]
    assert held_sends([0.0, 0.1, 1.0], [1.0, np.nan, 1.0], 2).tolist() == [False] * 3
    with pytest.raises(StageError):
        held_sends([0.0, 0.1], lat, 2)


def test_arrivals_waiting_at_the_client_cap_saturate_even_in_a_short_trial():
    # a 6 s trial at 21.5 req/s of chat requests on a server that holds 64 in flight: the
    # sends catch up with the cap before the server ever fills, so the achieved rate is not
    # judged and TTFT (from the send) stays flat; the cap says the load was not served
    arrivals = poisson_sends(129, rate=21.5, seed=21)
    service = np.clip(np.random.default_rng(22).lognormal(math.log(3.6), 0.4, 129), 0.5, 9.5)
    sends, lat = capped_client(arrivals, service, cap=64)
    ttft, ok = np.full(129, 0.07), np.ones(129, bool)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    plain = flow(sends, lat, ttft, ok, w, offered_rate=21.5)
    assert not plain.saturated and not plain.flow_judged and plain.held == 0
    f = flow(sends, lat, ttft, ok, w, offered_rate=21.5, max_in_flight=64)
    held = held_sends(sends, lat, 64)
    assert f.saturated and f.held == held[w.mask].sum() >= 0.1 * w.n
    assert (sends[held] > arrivals[held]).all()  # those flagged did wait
    assert "waited in the client for its cap of 64" in f.reason
    # the same server at 9 req/s never fills the cap: not saturated
    arrivals = poisson_sends(54, rate=9.0, seed=23)
    sends, lat = capped_client(arrivals, service[:54], cap=64)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, np.full(54, 0.07), np.ones(54, bool), w, offered_rate=9.0,
             max_in_flight=64)
    assert not f.saturated and f.held == 0


def test_growing_queue_is_saturated_with_reason():
    sends = poisson_sends(200, rate=2.0, seed=4)
    lat, ttft = fifo_queue(sends, service_s=0.8)  # serves 1.25 req/s < 2 arriving
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, ttft, np.ones(sends.size, bool), w)
    assert f.saturated
    assert f.achieved_rate_req_s == pytest.approx(1.25, rel=0.02)
    assert "achieved" in f.reason and "median TTFT grows" in f.reason
    # the same server below its service rate keeps up
    slow = poisson_sends(200, rate=0.5, seed=4)
    lat, ttft = fifo_queue(slow, service_s=0.8)
    w = steady_window(slow, warmup_pct=10, cooldown_pct=10, by="requests")
    assert not flow(slow, lat, ttft, np.ones(slow.size, bool), w).saturated


def test_ttft_growth_alone_saturates_only_beyond_the_ms_floor():
    sends = np.arange(60) * 0.5
    lat = np.full(60, 3.0)  # completions keep pace with arrivals
    ok = np.ones(60, bool)
    w = steady_window(sends, warmup_pct=0, cooldown_pct=0, by="requests")
    f = flow(sends, lat, np.linspace(0.05, 1.0, 60), ok, w)
    assert f.saturated and f.reason.startswith("median TTFT after the fill grows")
    assert not flow(sends, lat, np.linspace(0.010, 0.040, 60), ok, w).saturated  # < 50 ms


def test_ttft_rising_while_the_server_fills_is_not_saturation():
    # 12 s of arrivals at 10 req/s, each request 9 s in service: while the empty server fills,
    # TTFT rises with its batch from 20 to 120 ms, then stays flat. Thirds of the whole window
    # would read "51 ms to 120 ms" (a growing queue); the requests sent after the fill do not.
    sends = np.arange(120) * 0.1
    ttft = 0.020 + 0.100 * np.clip(sends / 9.0, 0, 1)
    lat = ttft + 9.0
    ok = np.ones(120, bool)
    w = steady_window(sends, warmup_pct=10, cooldown_pct=10, by="requests")
    f = flow(sends, lat, ttft, ok, w)
    assert f.flow_judged and not f.saturated, f.reason
    # the same rise through a trial too short to judge still reads as growth
    short = flow(sends[:90], lat[:90], ttft[:90], ok[:90],
                 steady_window(sends[:90], warmup_pct=10, cooldown_pct=10, by="requests"))
    assert not short.flow_judged and "TTFT grows" in short.reason


def test_a_pair_of_slow_ttfts_is_not_a_growing_queue():
    # a CPU rate point at 1 req/s (the packaged Gemma on 2 cores): two requests sent 10 ms
    # apart near the end waited ~300 ms each, the next two did not. The thirds' medians of its
    # 14 requests after the fill read 93 -> 213 ms, but the TTFTs do not rise through the
    # window (Mann-Kendall p = 0.19), so it is not saturated; a steady rise of the same size is
    ttft_ms = np.array([137, 97, 89, 71, 111, 77, 102, 79, 136, 108, 304, 297, 128, 83.0])
    sends = np.array([3.60, 4.40, 4.83, 9.40, 9.70, 10.05, 10.49, 12.03, 12.80, 13.59, 14.88,
                      14.89, 15.76, 16.70])
    lat = ttft_ms / 1e3 + 1.0
    ok = np.ones(sends.size, bool)
    w = steady_window(sends, warmup_pct=0, cooldown_pct=0, by="requests")
    assert rising_p(ttft_ms) > 0.1
    assert not flow(sends, lat, ttft_ms / 1e3, ok, w).saturated
    rise = np.sort(ttft_ms)
    assert rising_p(rise) < 1e-6
    f = flow(sends, rise / 1e3 + 1.0, rise / 1e3, ok, w)
    assert f.saturated and "Mann-Kendall p = " in f.reason
    assert rising_p([1.0, 2.0]) == 1.0 and rising_p([3.0, 2.0, 1.0]) >= 0.5  # falling


def test_failed_requests_over_five_percent_saturate():
    sends = poisson_sends(200, rate=1.0, seed=5)
    lat, ttft = np.full(200, 2.0), np.full(200, 0.1)
    ok = np.ones(200, bool)
    ok[::10] = False  # 10% failed
    lat[~ok] = ttft[~ok] = np.nan
    w = steady_window(sends, warmup_pct=0, cooldown_pct=0, by="requests")
    f = flow(sends, lat, ttft, ok, w)
    assert f.saturated and f.failed == 20 and "failed" in f.reason
    ok2 = np.ones(200, bool)
    ok2[:4] = False  # 2%
    f2 = flow(sends, np.full(200, 2.0), np.full(200, 0.1), ok2, w)
    assert not f2.saturated and f2.failed == 4


def test_flow_rejects_mismatched_lengths():
    w = steady_window([0.0, 1.0, 2.0], warmup_pct=0, cooldown_pct=0, by="requests")
    with pytest.raises(StageError):
        flow([0.0, 1.0], [1.0, 1.0], [0.1, 0.1], [True, True], w)


# ---------------------------------------------------------------- SLO values and margin


def test_slo_values_puts_inf_on_failures():
    v = slo_values([100.0, np.nan, 300.0], [True, False, True])
    assert v.tolist() == [100.0, math.inf, 300.0]


def test_slo_margin_matches_numpy_and_handles_inf():
    rng = np.random.default_rng(6)
    a, b = rng.gamma(2, 200, 50), rng.gamma(2, 200, 70)
    t = rng.gamma(3, 10, 120)
    t[:5] = np.nan  # 1-token outputs: dropped
    m = slo_margin({"ttft_ms": [a, b], "tpot_ms": [t]}, LIMITS, 90)
    want = max(np.percentile(np.r_[a, b], 90) / 1000, np.nanpercentile(t, 90) / 50)
    assert m == pytest.approx(want, rel=1e-12)
    few_fail = slo_values(np.full(100, 100.0), np.arange(100) >= 5)  # p90 on finite values
    assert slo_margin({"ttft_ms": [few_fail]}, LIMITS, 90) == pytest.approx(0.1)
    many_fail = slo_values(np.full(100, 100.0), np.arange(100) >= 50)  # p90 on a failure
    assert slo_margin({"ttft_ms": [many_fail]}, LIMITS, 90) == math.inf
    assert slo_margin({"ttft_ms": [a]}, {"ttft_ms": 1000, "e2el_ms": 10}, 50) == pytest.approx(
        np.percentile(a, 50) / 1000)
    with pytest.raises(StageError):
        slo_margin({"ttft_ms": [a]}, {"e2el_ms": 1000.0}, 90)


# ---------------------------------------------------------------- capacity at SLO


def test_capacity_interpolates_exactly_between_last_pass_and_first_fail():
    pts = [const_point(3, 1400, 45), const_point(1, 400, 20), const_point(2, 800, 40)]
    cap = capacity_at_slo(pts, LIMITS, resamples=200)
    # margins: 1 -> max(0.4, 0.4) = 0.4; 2 -> max(0.8, 0.8) = 0.8; 3 -> max(1.4, 0.9) = 1.4
    # crossing: 2 + (1 - 0.8) x (3 - 2) / (1.4 - 0.8) = 2 + 1/3
    assert cap.value == pytest.approx(2 + 1 / 3, rel=1e-12)
    assert cap.censored == "none" and cap.passing == (1.0, 2.0) and cap.first_failing == 3.0
    assert cap.ci_low == pytest.approx(cap.value) and cap.ci_high == pytest.approx(cap.value)
    assert cap.draws.shape == (200,)
    assert "interpolated between 2" in cap.note and "p90 TTFT 1400 ms > 1000 ms" in cap.note


def test_capacity_ignores_rates_above_the_first_failure():
    pts = [const_point(1, 400, 20), const_point(2, 800, 40), const_point(3, 1400, 45),
           const_point(4, 500, 20)]
    cap = capacity_at_slo(pts, LIMITS, resamples=50)
    assert cap.value == pytest.approx(2 + 1 / 3) and cap.passing == (1.0, 2.0, 4.0)
    assert "ignored" in cap.note


def test_capacity_censored_above_and_below():
    above = capacity_at_slo([const_point(1, 100, 10), const_point(2, 200, 20)], LIMITS,
                            resamples=50)
    assert above.censored == "above" and above.value == 2.0 and above.first_failing is None
    assert above.ci_low == above.ci_high == 2.0
    below = capacity_at_slo([const_point(1, 1100, 10), const_point(2, 1200, 20)], LIMITS,
                            resamples=50)
    assert below.censored == "below" and math.isnan(below.value)
    assert math.isnan(below.ci_low) and math.isnan(below.ci_high)
    assert np.isnan(below.draws).all() and below.passing == () and below.first_failing == 1.0


def test_saturated_or_failing_point_caps_at_last_passing_rate():
    # rate 3 has low latency (margin 0.5) but its queue grows: not sustainable
    sat = capacity_at_slo([const_point(1, 400, 20), const_point(2, 800, 40),
                           const_point(3, 500, 20, saturated=True)], LIMITS, resamples=50)
    assert sat.value == 2.0 and sat.first_failing == 3.0 and "saturated" in sat.note
    # rate 3 with 50% failures: p90 TTFT falls on a failure (inf): no interpolation either
    inf = capacity_at_slo([const_point(1, 400, 20), const_point(2, 800, 40),
                           const_point(3, 500, 20, failed=10)], LIMITS, resamples=50)
    assert inf.value == 2.0 and "nothing above 2 req/s" in inf.note


def test_bracket_draws_of_two_variants_are_independent():
    # Two variants that both pass 16 and saturate at 20 req/s: each capacity is known only to
    # [16, 20). With one stream their uniform draws coincide and the gain reads "+0 % [+0, +0]",
    # a certainty no measurement gave; with streams of their own the interval spans the
    # brackets' resolution (about -17 % to +22 % for two independent uniforms on [16, 20)).
    def sweep():
        return [const_point(8, 300, 10), const_point(16, 400, 12),
                const_point(20, 500, 15, saturated=True)]
    a = capacity_at_slo(sweep(), LIMITS, resamples=2000, seed=3, bracket_seed=11)
    b = capacity_at_slo(sweep(), LIMITS, resamples=2000, seed=3, bracket_seed=12)
    same = capacity_at_slo(sweep(), LIMITS, resamples=2000, seed=3, bracket_seed=11)
    assert a.value == b.value == 16.0 and a.censored == "none"
    assert ((a.draws >= 16) & (a.draws < 20)).all()
    assert np.array_equal(a.draws, same.draws)
    gain, lo, hi = capacity_gain(a, b)
    assert gain == 0.0 and -20 < lo < -10 and 10 < hi < 25
    assert capacity_gain(a, same)[1:] == (0.0, 0.0)


def unjudged(point: RatePoint) -> RatePoint:
    return RatePoint(point.rate, point.saturated, point.samples, judged=False)


def test_a_rate_met_in_a_trial_too_short_to_judge_is_not_counted():
    # rates 2 and 3 met the SLO, but rate 2's trials ended before the server filled: the
    # capacity is at least 1 (censored there), and the rates from 2 up are left out
    cap = capacity_at_slo([const_point(1, 400, 20), unjudged(const_point(2, 500, 20)),
                           const_point(3, 600, 30)], LIMITS, resamples=50)
    assert cap.censored == "above" and cap.value == 1.0 and cap.passing == (1.0,)
    assert "2 req/s met the p90 limits in trials shorter than the server's fill" in cap.note
    # the lowest rate unjudged: nothing is established
    none = capacity_at_slo([unjudged(const_point(1, 400, 20)), const_point(2, 500, 20)],
                           LIMITS, resamples=50)
    assert none.censored == "unjudged" and math.isnan(none.value) and none.passing == ()
    assert math.isnan(none.ci_low) and np.isnan(none.draws).all()
    assert none.note.startswith("not established: the lowest rate 1 req/s")
    # an unjudged rate that already misses a limit, or is saturated, fails as any other
    miss = capacity_at_slo([const_point(1, 400, 20), const_point(2, 800, 40),
                            unjudged(const_point(3, 1400, 45))], LIMITS, resamples=50)
    assert miss.value == pytest.approx(2 + 1 / 3) and miss.censored == "none"
    sat = capacity_at_slo([const_point(1, 400, 20),
                           unjudged(const_point(2, 500, 20, saturated=True))], LIMITS,
                          resamples=50)
    assert sat.value == 1.0 and sat.censored == "none" and sat.first_failing == 2.0


def test_interval_contains_value_and_narrows_with_more_requests():
    widths = []
    for n in (40, 1500):
        pts = [model_point(r, n, seed=10 + r) for r in (1, 2, 3, 4)]
        cap = capacity_at_slo(pts, LIMITS, resamples=500, seed=1)
        assert cap.censored == "none" and 2 < cap.value < 3
        assert cap.ci_low <= cap.value <= cap.ci_high
        widths.append(cap.ci_high - cap.ci_low)
    # true p90 = 379.6 x rate ms crosses 1000 ms at 2.63 req/s
    assert cap.ci_low < 1000 / (200 * math.exp(0.5 * 1.2815516)) < cap.ci_high
    assert widths[1] < widths[0] / 2


def test_capacity_is_deterministic_for_a_seed():
    pts = [model_point(r, 60, seed=20 + r) for r in (1, 2, 3, 4)]
    a = capacity_at_slo(pts, LIMITS, resamples=300, seed=7)
    b = capacity_at_slo(pts, LIMITS, resamples=300, seed=7)
    c = capacity_at_slo(pts, LIMITS, resamples=300, seed=8)
    assert np.array_equal(a.draws, b.draws) and (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert not np.array_equal(a.draws, c.draws) and a.value == c.value


def test_capacity_rejects_bad_points():
    with pytest.raises(StageError):
        capacity_at_slo([], LIMITS)
    with pytest.raises(StageError):
        capacity_at_slo([const_point(1, 1, 1), const_point(1, 2, 2)], LIMITS)  # same rate
    with pytest.raises(StageError):
        capacity_at_slo([const_point(0, 1, 1)], LIMITS)


# ---------------------------------------------------------------- gain and cost


def test_capacity_gain_sign_and_interval():
    fast = capacity_at_slo([model_point(r, 800, seed=30 + r, scale=150) for r in (1, 2, 3, 4)],
                           LIMITS, resamples=500, seed=1)
    slow = capacity_at_slo([model_point(r, 800, seed=40 + r) for r in (1, 2, 3, 4)],
                           LIMITS, resamples=500, seed=2)
    gain, lo, hi = capacity_gain(fast, slow)
    assert gain == pytest.approx((fast.value / slow.value - 1) * 100)
    assert 0 < lo < gain < hi and 15 < gain < 50  # true gain 200 / 150 - 1 = 33%
    back, blo, bhi = capacity_gain(slow, fast)
    assert blo < back < bhi < 0
    below = Capacity(math.nan, math.nan, math.nan, "below", (), 1.0, np.full(500, np.nan), "")
    assert all(math.isnan(x) for x in capacity_gain(fast, below))
    assert all(math.isnan(x) for x in capacity_gain(below, fast))


def test_cost_and_energy_formulas():
    # 2 GPUs at 3.6 USD/h = 0.002 USD/s; at 1000 tok/s: 2e-6 USD/token = 2 USD per million
    assert cost_per_million_tokens(3.6, 2, 1000.0) == pytest.approx(2.0)
    assert cost_per_million_tokens(2.0, 1, 500.0) == pytest.approx(2.0 / 3600 / 500 * 1e6)
    assert math.isnan(cost_per_million_tokens(2.0, 1, 0.0))
    assert math.isnan(cost_per_million_tokens(2.0, 1, math.nan))
    assert joules_per_token(500.0, 100) == pytest.approx(5.0)
    assert math.isnan(joules_per_token(500.0, 0)) and math.isnan(joules_per_token(math.nan, 10))
