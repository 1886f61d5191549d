"""The verdict card's decisions on seeded data: quality weighed against the study's tolerance,
speed only on random weights, non-deciding points kept out, the claim read both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalkit.analysis import decision as dc
from evalkit.analysis.quality import quality_signal
from evalkit.analysis.report import Report
from evalkit.core import records as rec
from evalkit.core.specs import Claim

#: p50 E2E / TTFT / TPOT (ms) at one request in flight; W4A8-FP8 is the fastest
SPEED = {"w4a16": (1000.0, 100.0, 7.0), "w4a8_fp8": (600.0, 50.0, 4.5),
         "w8a8_int8": (800.0, 70.0, 5.5)}
#: quality delta vs base (points) and the half-width of its interval
QUALITY = {"w4a16": (-2.0, 0.5), "w4a8_fp8": (-5.0, 0.6), "w8a8_int8": (0.3, 0.8)}


def _report(*, trials: int = 3, real: bool = True, tolerance: float = 1.0,
            eager: bool = False, workloads: dict[str, float] | None = None,
            variants: tuple[str, ...] = tuple(SPEED)) -> Report:
    """One run at one request in flight; with ``real=False`` a random-weights run (no
    accuracy records). ``workloads``: workload name -> factor on W4A8-FP8's latencies
    (default: one workload, ``chat``, factor 1); ``variants``: the schemes measured."""
    rng = np.random.default_rng(0)
    rows, samples = [], []
    for wl, factor in (workloads or {"chat": 1.0}).items():
        for v, speed in ((v, SPEED[v]) for v in variants):
            e2e, ttft, tpot = (x * factor for x in speed) if v == "w4a8_fp8" else speed
            for m, val in (("e2el_ms", e2e), ("ttft_ms", ttft), ("tpot_ms", tpot)):
                rows.append(dict(variant=v, scheme=v, stage="latency", mode="server",
                                 workload=wl, concurrency=1, input_len=512, output_len=64,
                                 metric=m, stat="p50", value=val, unit="ms",
                                 higher_is_better=False, status="ok", hardware="NVIDIA H100"))
                for t in range(trials):
                    for x in rng.normal(val, val * 0.02, 30):
                        samples.append(dict(variant=v, mode="server", workload=wl,
                                            concurrency=1, trial=t, metric=m, value=x))
            rows.append(dict(variant=v, scheme=v, stage="latency", mode="server", workload=wl,
                             concurrency=1, input_len=512, output_len=64, metric="ttft_ms",
                             stat="trial_spread_pct", value=1.0, unit="%",
                             higher_is_better=False, n=trials, status="ok",
                             hardware="NVIDIA H100"))
    for v, (d, h) in ({**QUALITY, "base": (0.0, 0.0)} if real else {}).items():
        rows.append(dict(variant=v, scheme=v, stage="accuracy", task="arc_easy", metric="acc",
                         stat="value", value=0.6 + d / 100, unit="fraction",
                         higher_is_better=True, n=1000))
        if v != "base":
            for stat, x in (("delta", d), ("ci_low", d - h), ("ci_high", d + h)):
                rows.append(dict(variant=v, scheme=v, stage="accuracy", task="arc_easy",
                                 metric="acc", stat=stat, value=x / 100, unit="fraction",
                                 higher_is_better=True, n=1000))
    claim = Claim(name="c", text="W4A8 is 58% faster TTFT than W4A16", variant="w4a8_fp8",
                  reference="w4a16", ttft_reduction_pct=58, tpot_reduction_pct=45)
    return Report(records=rec.make_records(rows, run_id="r1"), study="s", model="m",
                  hardware="NVIDIA H100", workload=None, concurrency=None, reference="w4a16",
                  samples=pd.DataFrame(samples), real_weights=real, eager_gpu=eager,
                  quality_tolerance_pts=tolerance, claims=(claim,))


def _cell(rep: Report) -> dc.Cell:
    cells, _ = dc.run_cells(rep, "s/r1", "m")
    return next(c for c in cells if c.row == "batch-1 decode")


def test_quality_signal_is_the_paired_accuracy_delta():
    rep = _report()
    q = quality_signal(rep.records, "w4a8_fp8")
    assert q is not None and q.signal == "accuracy delta"
    assert q.delta_pts == pytest.approx(-5.0) and q.hi_pts == pytest.approx(-4.4)
    assert q.below(1.0) and not quality_signal(rep.records, "w8a8_int8").below(1.0)
    assert quality_signal(rep.records, "base").delta_pts == 0


def test_fastest_scheme_that_loses_quality_is_passed_over_and_named():
    c = _cell(_report())
    # W4A8-FP8 is fastest but loses 5 points; W4A16 loses 2 (beyond 1); W8A8-INT8 is lossless
    assert c.variant == "w8a8_int8" and c.tone == "good"
    assert "20 % faster than w4a16" in c.gain
    assert any("w4a8_fp8" in n and "beyond the 1-point tolerance" in n for n in c.notes)
    # a tolerance of 6 points lets the fastest one through
    assert _cell(_report(tolerance=6.0)).variant == "w4a8_fp8"


def test_stated_gain_and_its_interval_belong_to_one_measured_point():
    """Two points, W4A8-FP8 40 % and 28 % faster on E2E: the card states the lower median
    point (28 %) with that point's interval, never the mean of the two (34 %) beside one
    point's interval."""
    c = _cell(_report(real=False, workloads={"a": 1.0, "b": 1.2}))
    assert c.variant == "w4a8_fp8" and "n = 2 points" in c.gain
    assert "lower median 28 % faster than w4a16" in c.gain, c.gain
    lo, hi = (float(x) for x in c.gain.split("[")[1].split(" %]")[0].split(", "))
    assert lo <= 28 <= hi < 34
    # three points: the median is the middle one
    c3 = _cell(_report(real=False, workloads={"a": 1.0, "b": 1.2, "c": 1.1}))
    assert "median 34 % faster than w4a16" in c3.gain and "lower" not in c3.gain, c3.gain


def test_the_run_that_weighed_more_schemes_answers_the_cell():
    """Two runs of one shape: W4A8-FP8 vs W4A16 alone on three points, and all three schemes
    on one point, where W8A8-INT8 is fastest. The cell is the three-scheme run's (W8A8-INT8):
    the two-scheme run never measured it, so its larger count of points cannot recommend
    W4A8-FP8 over it; the other run's cell is kept as evidence with why."""
    two = _report(real=False, workloads={"a": 1.0, "b": 1.0, "c": 1.0},
                  variants=("w4a16", "w4a8_fp8"))
    three = _report(real=False, workloads={"a": 1.5})
    card = dc.build_card([dc.RunEntry(two, "s/r1", "m"), dc.RunEntry(three, "s/r2", "m")], "t")
    cell = next(c for c in card.cells if c.row == "batch-1 decode")
    assert (cell.run, cell.variant, cell.schemes, cell.points) == ("s/r2", "w8a8_int8", 3, 1)
    aside = card.evidence[card.evidence["run"] == "s/r1"]
    assert len(aside) == 1 and "weighed more schemes" in aside["why"].iloc[0]
    assert "W4A8-FP8" in aside["gain"].iloc[0]


def test_open_cell_lists_each_scheme_with_how_often_it_was_faster():
    """W4A8-FP8 40 % faster at one point and 20 % slower at the other: no recommendation;
    the cell gives its median-point gain (the lower middle one: 20 % slower) and 1 of 2."""
    c = _cell(_report(real=False, workloads={"a": 1.0, "b": 2.0},
                      variants=("w4a16", "w4a8_fp8")))
    assert c.variant is None and c.tone == "open" and c.open_kind == "depends on load"
    assert c.gain.startswith("w4a8_fp8 20 % slower (1/2) · E2E vs w4a16, median point"), c.gain


def test_random_weights_say_speed_only():
    c = _cell(_report(real=False))
    assert c.variant == "w4a8_fp8" and c.tone == "speed"
    assert c.quality == "speed only (random weights)"


@pytest.mark.parametrize(("kw", "why"), [({"trials": 1}, "single trial"),
                                         ({"eager": True}, "eager GPU engine")])
def test_non_deciding_points_decide_no_cell(kw, why):
    rep = _report(**kw)
    cells, evidence = dc.run_cells(rep, "s/r1", "m")
    c = next(c for c in cells if c.row == "batch-1 decode")
    assert c.variant is None and c.tone == "none" and why in c.gain
    assert len(evidence) and all(why in e["why"] for e in evidence)
    card = dc.build_card([dc.RunEntry(rep, "s/r1", "m")], "t")
    assert all(r.points == 0 for r in card.readings)  # nor does it check the claim


def test_claim_read_both_ways():
    rep = _report()
    card = dc.build_card([dc.RunEntry(rep, "s/r1", "m")], "t")
    ttft = next(r for r in card.readings if r.metric == "ttft_ms")
    # measured: 50 % lower TTFT = speed x2.0; claim 58 %: latency reading fails, speed
    # reading (x1.58 = latency -36.7 %) holds
    assert ttft.low == pytest.approx(50, abs=2) and ttft.reached_latency == 0
    assert ttft.reached_speed == 1 and ttft.speed_equivalent_pct == pytest.approx(36.7, abs=0.1)
    assert "latency −58 %: holds nowhere" in ttft.verdict_latency()
    assert "speed ×1.58" in ttft.verdict_speed() and "holds at 1 of 1" in ttft.verdict_speed()
    # superseded: nothing decides, the claim is not checked
    card2 = dc.build_card([dc.RunEntry(rep, "s/r1", "m", superseded_by="s/r2")], "t")
    assert all(c.variant is None for c in card2.cells)
    assert set(card2.evidence["why"]) == {"superseded by s/r2"}


def test_pct_words_never_negative():
    assert dc.pct_words(-17.2) == "17 % slower" and dc.pct_words(23) == "23 % faster"
    assert dc.interval_words(-19, -17) == "[17–19 % slower]"


def test_card_carries_kernel_substitution_and_quantized_baseline(tmp_path):
    """On the retired Gemma run (real weights, eager engine, W4A8-INT8 ran the FP8 kernel,
    a dequantized-GGUF baseline): no cell is decided by its eager single-trial points, the
    card carries both caveats, and quality is weighed per scheme against the tolerance."""
    from retired_runs import retired_run

    from evalkit.analysis.load import load_report
    from evalkit.core.run import open_run

    run = open_run(retired_run("hopper-gemma/r1", tmp_path))
    rep = load_report(run.config(), run)
    assert rep.real_weights and rep.eager_gpu
    card = dc.build_card([dc.RunEntry(rep, "hopper-gemma/r1", "gemma3-270m")], "t")
    assert all(c.variant is None for c in card.cells)
    assert set(card.evidence["why"]) == {dc.run_exclusion(rep)}
    notes = " ".join(card.notes)
    assert "w4a8_int8: vLLM ran W4A8-INT8" in notes and "dequantized" in notes
    tones = {name.split(" (")[0]: tone for name, _, tone in card.quality}
    # W4A16 loses 4.9 points [-7.0, -2.8]: beyond the 1-point tolerance; W8A8-INT8 does not
    assert tones["W4A16"] == "loss" and tones["W8A8-INT8"] != "loss"


def test_a_scheme_run_on_another_schemes_kernel_decides_nothing(tmp_path):
    """hopper-gemma-gptq/r1 (H100, CUDA graphs): vLLM ran the W4A8-INT8 checkpoint with the
    FP8-activation W4A8 kernel. No cell and no quality line of the card is W4A8-INT8's, its
    points are other evidence with that reason, and the run's one line says so; the other
    schemes of the run still decide."""
    import shutil

    from evalkit.analysis.load import load_report
    from evalkit.analysis.summary import one_line
    from evalkit.core.run import open_run

    src = Path(__file__).resolve().parents[2] / "outputs/reference/hopper-gemma-gptq/r1"
    run = open_run(shutil.copytree(src, tmp_path / "r1"))
    rep = load_report(run.config(), run)
    assert set(rep.substituted) == {"w4a8_int8"} and not rep.eager_gpu
    card = dc.build_card([dc.RunEntry(rep, "hopper-gemma-gptq/r1", "gemma3-270m")], "t")
    assert all(c.variant != "w4a8_int8" and "w4a8_int8" not in c.gain for c in card.cells)
    assert any(c.variant is not None or c.tone == "open" for c in card.cells)
    mine = card.evidence[card.evidence["comparison"].str.startswith("w4a8_int8 vs")]
    assert len(mine) and mine["why"].str.contains("another scheme's kernel").all()
    assert not any(name.startswith("W4A8-INT8") for name, _, _ in card.quality)
    assert any(name.startswith("W4A8-FP8") for name, _, _ in card.quality)
    assert "w4a8_int8: vLLM ran W4A8-INT8" in " ".join(card.notes)
    line = one_line(rep)
    assert "w4a8_int8 vs base: vLLM ran w4a8_int8 with another scheme's kernel" in line
    assert line.count("w4a16 vs base") == 1
