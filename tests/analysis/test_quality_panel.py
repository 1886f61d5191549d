"""Tests for the quality signals beyond accuracy deltas (evalkit.analysis.quality)."""

from __future__ import annotations

import math

import pytest

from evalkit.analysis import quality as aq
from evalkit.core.records import make_records


def _rows(variant, scheme, stage, task, metric, stats, unit="fraction", n=30):
    return [{"variant": variant, "scheme": scheme, "stage": stage, "task": task,
             "metric": metric, "stat": s, "value": v, "unit": unit, "n": n}
            for s, v in stats.items()]


def records(kld=(0.02, 0.015, 0.026), flips=(0.1, 0.046, 0.2), delta=(-0.03, -0.1, 0.04)):
    rows = _rows("base", "base", "accuracy", "arc_easy", "acc", {"value": 0.6, "stderr": 0.09})
    rows += _rows("w4", "w4a16", "accuracy", "arc_easy", "acc", {
        "value": 0.57, "stderr": 0.09, "delta": delta[0], "ci_low": delta[1],
        "ci_high": delta[2], "flip_rate": flips[0], "flip_rate_ci_low": flips[1],
        "flip_rate_ci_high": flips[2], "c2w": 2, "w2c": 1})
    rows += _rows("base", "base", "quality", "lambada_openai", "perplexity",
                  {"value": 20.0, "ci_low": 15.0, "ci_high": 26.0}, unit="perplexity", n=2048)
    if kld is not None:
        rows += _rows("w4", "w4a16", "quality", "lambada_openai", "kld_nats",
                      {"mean": kld[0], "ci_low": kld[1], "ci_high": kld[2], "p99": 0.3,
                       "p99_ci_low": 0.2, "p99_ci_high": 0.4}, unit="nats", n=2048)
        rows += _rows("w4", "w4a16", "quality", "lambada_openai", "top1_agreement",
                      {"value": 0.93, "ci_low": 0.91, "ci_high": 0.95}, n=2048)
        rows += _rows("w4", "w4a16", "quality", "lambada_openai", "perplexity",
                      {"value": 21.0, "ci_low": 16.0, "ci_high": 27.0}, unit="perplexity",
                      n=2048)
    return make_records(rows, run_id="r", study="s", model="m")


def test_separation_by_hand():
    assert aq._separation(0.02, 0.015, 0.026, 0.0) == pytest.approx(0.02 / 0.005)
    assert aq._separation(0.93, 0.91, 0.95, 1.0) == pytest.approx(0.07 / 0.02)
    assert aq._separation(-0.03, -0.1, 0.04, 0.0) == pytest.approx(0.03 / 0.07)
    assert aq._separation(0.0, 0.0, 0.0, 0.0) == 0.0
    assert aq._separation(0.1, 0.1, 0.1, 0.0) == math.inf
    assert math.isnan(aq._separation(math.nan, 0, 1, 0))


def test_quality_signals_collects_every_measured_signal():
    s = aq.quality_signals(records())
    assert set(s.variant) == {"w4"}  # the base has nothing to compare against
    got = s.set_index("signal")
    assert set(got.index) == {"accuracy_delta", "flip_rate", "kld_mean", "top1_agreement"}
    assert got.loc["kld_mean", "task"] == "lambada_openai" and got.loc["kld_mean", "n"] == 2048
    assert got.loc["flip_rate", "ci_high"] == 0.2 and got.loc["top1_agreement", "null"] == 1.0


def test_most_sensitive_signal_picks_the_largest_separation():
    best = aq.most_sensitive_signal(records(), "w4")
    assert best.signal == "kld_mean" and best.detected  # 4 half-widths from 0
    assert best.value == 0.02 and (best.ci_low, best.ci_high) == (0.015, 0.026)
    assert "mean KLD 0.0200 nats [0.0150, 0.0260] (lambada_openai)" == best.text()
    # a wide KLD interval (0.02 / 0.019 = 1.05): top-1 agreement (0.07 / 0.02 = 3.5) wins
    best = aq.most_sensitive_signal(records(kld=(0.02, 0.001, 0.05)), "w4")
    assert best.signal == "top1_agreement"
    # without the quality section: flips beat an accuracy delta whose interval spans 0
    best = aq.most_sensitive_signal(records(kld=None), "w4")
    assert best.signal == "flip_rate" and best.detected
    # no change anywhere: the tie goes to the first of the order (accuracy-only here: flips)
    same = records(kld=None, flips=(0.0, 0.0, 0.11), delta=(0.0, 0.0, 0.0))
    best = aq.most_sensitive_signal(same, "w4")
    assert best.signal == "flip_rate" and best.separation == 0 and not best.detected
    assert aq.most_sensitive_signal(records(), "nope") is None


def test_quality_panel_one_row_per_variant():
    t = aq.quality_panel(records())
    assert list(t.variant) == ["w4"]
    row = t.iloc[0]
    assert row["accuracy delta arc_easy (acc)"] == "-0.030 [-0.100, +0.040]"
    assert row["flip rate arc_easy (acc)"] == "0.100 [0.046, 0.200]"
    assert row["mean KLD (nats)"] == "0.0200 [0.0150, 0.0260]"
    assert row["p99 KLD (nats)"] == "0.300 [0.200, 0.400]"
    assert row["top-1 agreement"] == "0.930 [0.910, 0.950]"
    assert row["most sensitive signal"].startswith("mean KLD")
    assert aq.quality_panel(make_records([])).empty


def test_report_section_and_cells_show_the_panel():
    from evalkit.analysis.report import Report  # noqa: PLC0415
    from evalkit.core.units import StageResult  # noqa: PLC0415
    from evalkit.ui import sections  # noqa: PLC0415
    from evalkit.ui.cells import evaluate, report  # noqa: PLC0415

    df = records()
    df.loc[df["stage"] == "quality", "note"] = "vs base on taskpack:lambada_openai; 16 sequences"
    r = Report(records=df, study="s", model="m", hardware="cpu", workload=None,
               concurrency=None, reference=None)
    text, t = sections.quality_panel(r)
    assert text.startswith("## Quality beyond accuracy deltas") and "flip rate" in text.lower()
    assert "base perplexity 20.00" in text and list(t.variant) == ["w4"]
    assert "mean KLD (nats)" in report.show_quality_panel(r).data.columns
    # accuracy only: the panel says KLD was not measured
    acc_only = Report(records=df[df["stage"] == "accuracy"], study="s", model="m",
                      hardware="cpu", workload=None, concurrency=None, reference=None)
    assert "KL divergence was not measured" in sections.quality_panel(acc_only)[0]
    assert "most sensitive signal" in evaluate.show_quality(
        StageResult("quality", df)).data.columns
