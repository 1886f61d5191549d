"""evalkit compare: changes between two runs, intervals from raw data, regression flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_runs import N_DOCS, _correct, _ttft, make_run  # noqa: E402

from evalkit.analysis import compare as cmp
from evalkit.core import records as rec
from evalkit.metrics import stats
from evalkit.ui.cli import main


def _row(df: pd.DataFrame, stage: str, metric: str) -> pd.Series:
    sel = df[(df["stage"] == stage) & (df["metric"] == metric)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_identical_runs_change_nothing(tmp_path, capsys):
    c, t = _correct(0.6), _ttft(0.2, 0.05)
    a = make_run(tmp_path, "a", correct=c, ttft_s=t, created="2026-01-01T00:00:00")
    b = make_run(tmp_path, "b", correct=c, ttft_s=t, created="2026-01-02T00:00:00")
    df = cmp.compare_runs(a, b)
    assert list(df.columns) == cmp.COLUMNS
    acc = _row(df, "accuracy", "acc")
    assert acc["change"] == 0 and acc["ci_low"] == 0 and acc["ci_high"] == 0
    assert "paired bootstrap over 200 documents" in acc["method"]
    ttft = _row(df, "latency", "ttft_ms")
    assert ttft["change"] == 0 and ttft["ci_low"] <= 0 <= ttft["ci_high"]
    assert not df["regression"].any()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "no regression beyond noise" in out and "REGRESSION" not in out


def test_slower_latency_is_flagged_and_exits_5(tmp_path, capsys):
    a = make_run(tmp_path, "a", correct=_correct(0.6), ttft_s=_ttft(0.20, 0.05),
                 created="2026-01-01T00:00:00")
    b = make_run(tmp_path, "b", correct=_correct(0.6), ttft_s=_ttft(0.30, 0.05, seed=2),
                 created="2026-01-02T00:00:00")
    df = cmp.compare_runs(a, b)
    ttft = _row(df, "latency", "ttft_ms")
    assert ttft["regression"] and ttft["ci_low"] > 0
    assert ttft["change_pct"] == pytest.approx(50, abs=8)
    assert ttft["value_a"] == pytest.approx(
        float(rec.load_runs(a).query("metric == 'ttft_ms' and stat == 'p50'")["value"].iloc[0]))
    assert not _row(df, "latency", "tpot_ms")["regression"]  # unchanged
    assert main(["compare", str(a), str(b), "--csv", str(tmp_path / "c.csv")]) == 5
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regression(s)" in out
    assert len(pd.read_csv(tmp_path / "c.csv")) == len(df)
    # the other direction is an improvement, not a regression
    assert main(["compare", str(b), str(a)]) == 0


def test_noise_and_small_changes_are_not_flagged(tmp_path):
    a = make_run(tmp_path, "a", correct=_correct(0.6), ttft_s=_ttft(0.20, 0.6),
                 created="2026-01-01T00:00:00")
    # +10% with a wide spread: the interval covers 0
    b = make_run(tmp_path, "b", correct=_correct(0.6), ttft_s=_ttft(0.22, 0.6, seed=2),
                 created="2026-01-02T00:00:00")
    ttft = _row(cmp.compare_runs(a, b), "latency", "ttft_ms")
    assert ttft["ci_low"] < 0 < ttft["ci_high"] and not ttft["regression"]
    # +3% with almost no spread: beyond the interval but under the 5% floor
    a2 = make_run(tmp_path / "2", "a", correct=_correct(0.6), ttft_s=np.full(30, 0.200),
                  created="2026-01-01T00:00:00")
    b2 = make_run(tmp_path / "2", "b", correct=_correct(0.6), ttft_s=np.full(30, 0.206),
                  created="2026-01-02T00:00:00")
    df = cmp.compare_runs(a2, b2)
    ttft = _row(df, "latency", "ttft_ms")
    assert ttft["ci_low"] > 0 and not ttft["regression"]
    assert _row(cmp.compare_runs(a2, b2, min_latency_change_pct=1.0), "latency",
                "ttft_ms")["regression"]


def test_accuracy_drop_uses_paired_bootstrap(tmp_path):
    c = _correct(0.7)
    worse = c.copy()
    worse[np.flatnonzero(c)[:30]] = 0  # 30 of the right answers now wrong
    a = make_run(tmp_path, "a", correct=c, ttft_s=_ttft(0.2, 0.05),
                 created="2026-01-01T00:00:00")
    b = make_run(tmp_path, "b", correct=worse, ttft_s=_ttft(0.2, 0.05),
                 created="2026-01-02T00:00:00")
    acc = _row(cmp.compare_runs(a, b), "accuracy", "acc")
    assert acc["change"] == pytest.approx(-30 / N_DOCS)
    expect = stats.paired_bootstrap(c, worse)
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((expect.ci_low, expect.ci_high))
    assert acc["regression"] and acc["ci_high"] < 0
    assert not _row(cmp.compare_runs(b, a), "accuracy", "acc")["regression"]


def test_without_raw_data_no_interval_no_flag(tmp_path):
    a = make_run(tmp_path, "a", correct=_correct(0.7), ttft_s=_ttft(0.2, 0.05),
                 created="2026-01-01T00:00:00", raw=False)
    b = make_run(tmp_path, "b", correct=_correct(0.3, seed=5), ttft_s=_ttft(0.4, 0.05),
                 created="2026-01-02T00:00:00", raw=False)
    df = cmp.compare_runs(a, b)
    assert df["ci_low"].isna().all() and not df["regression"].any()
    assert _row(df, "accuracy", "acc")["change"] < -0.2
    assert _row(df, "latency", "ttft_ms")["method"] == "records only"


def test_point_that_now_fails_is_a_regression(tmp_path):
    a = make_run(tmp_path, "a", correct=_correct(0.6), ttft_s=_ttft(0.2, 0.05),
                 created="2026-01-01T00:00:00")
    b = make_run(tmp_path, "b", correct=_correct(0.6), ttft_s=_ttft(0.2, 0.05),
                 created="2026-01-02T00:00:00", status="failed")
    df = cmp.compare_runs(a, b)
    st = _row(df, "latency", "status")
    assert st["regression"] and "ok in a, failed in b: server died" in st["note"]
    assert main(["compare", str(a), str(b)]) == 5


def test_previous_run_and_report_section(tmp_path):
    from evalkit.analysis.report import Report
    from evalkit.ui import sections

    c, t = _correct(0.6), _ttft(0.2, 0.05)
    first = make_run(tmp_path, "zz-first", correct=c, ttft_s=t, created="2026-01-01T00:00:00")
    assert cmp.previous_run(first) is None
    prev, empty = cmp.comparison_with_previous(first)
    assert prev is None and empty.empty
    r = Report(records=rec.load_runs(first), study="study", model="m", hardware="cpu",
               workload=None, concurrency=None, reference=None)
    md, table = sections.changes(r)
    assert md.startswith("## Change since the previous run") and "No earlier run" in md
    assert table.empty

    second = make_run(tmp_path, "aa-second", correct=c, ttft_s=t * 1.5,
                      created="2026-01-02T00:00:00")
    assert cmp.previous_run(second) == first.resolve()  # by creation time, not by name
    assert cmp.previous_run(first) is None
    prev, df = cmp.comparison_with_previous(second)
    r2 = Report(records=rec.load_runs(second), study="study", model="m", hardware="cpu",
                workload=None, concurrency=None, reference=None, previous_run=prev, changes=df)
    md, table = sections.changes(r2)
    assert "`zz-first`" in md and "1 regression" in md
    assert "REGRESSION" in set(table["regression"])


def test_independent_bootstrap():
    a = np.arange(100.0)
    r = stats.independent_bootstrap(a, a + 10, stat=np.median, seed=3)
    assert r.delta == 10 and r.ci_low < 10 < r.ci_high
    assert stats.independent_bootstrap(a, a + 10, seed=3) == r  # seeded
    assert math.isnan(stats.independent_bootstrap([], a).delta)
    with pytest.raises(ValueError):
        stats.independent_bootstrap([1.0, math.nan], a)


# ---- what the scheduled-run example in the README runs


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "scheduled-run.sh"


def _fake_bin(tmp_path: Path) -> Path:
    """`python` is this Python; `evalkit run` only copies a prepared run into place (and
    exits with FAKE_RUN_RC); every other `evalkit` command is the real one."""
    import sys

    b = tmp_path / "bin"
    b.mkdir()
    (b / "python").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')
    (b / "python").chmod(0o755)
    (b / "evalkit").write_text(
        "#!/usr/bin/env bash\n"
        'if [[ $1 == run ]]; then cp -r "$FAKE_RUN_SRC" "$FAKE_STUDY_DIR/$4"; '
        'exit "${FAKE_RUN_RC:-0}"; fi\n'
        f'exec "{sys.executable}" -m evalkit.ui.cli "$@"\n')
    (b / "evalkit").chmod(0o755)
    return b


@pytest.mark.parametrize("later,run_rc,expect", [
    ("regressed", 0, 5), ("same", 0, 0), ("same", 4, 4), ("same", 3, 3),
])
def test_scheduled_run_exit_codes(tmp_path, later, run_rc, expect):
    import os
    import subprocess

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    root = tmp_path / "out"
    study = tmp_path / "nightly.yaml"
    study.write_text(f"study: study\nmodel: {{source: hf_dir, path: {model}}}\n"
                     f"variants: [{{name: base, scheme: base}}]\noutput_root: {root}\n")
    c, t = _correct(0.6), _ttft(0.2, 0.05)
    make_run(root, "night-1", correct=c, ttft_s=t, created="2026-01-01T02:30:00")
    src = make_run(tmp_path / "src", "night-2", correct=c,
                   ttft_s=t * (1.5 if later == "regressed" else 1.0),
                   created="2026-01-02T02:30:00")
    env = {**os.environ, "EVALKIT_BIN": str(_fake_bin(tmp_path)), "FAKE_RUN_SRC": str(src),
           "FAKE_STUDY_DIR": str(root / "study"), "FAKE_RUN_RC": str(run_rc)}
    proc = subprocess.run(["bash", str(SCRIPT), str(study), "night-2"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    if run_rc in (0, 4):
        assert "compare study/night-1 (A) -> study/night-2 (B)" in proc.stdout
        assert ("REGRESSION" in proc.stdout) is (later == "regressed")
    else:
        assert "compare" not in proc.stdout


def test_compare_previous_without_earlier_run(tmp_path, capsys):
    only = make_run(tmp_path, "only", correct=_correct(0.6), ttft_s=_ttft(0.2, 0.05),
                    created="2026-01-01T00:00:00")
    assert main(["compare", "--previous", str(only)]) == 0
    assert "no earlier run" in capsys.readouterr().out
    assert main(["compare", str(only)]) == 1  # one run without --previous: a usage error


# ---- capacity at the SLO, and rate points over their steady-state window


def _with_capacity(run: Path, ttft_ms_at: dict[float, float], *, seed: int = 0) -> Path:
    """Add a capacity at the SLO to a fake run: :func:`evalkit.metrics.traffic.capacity_at_slo`
    over rate points whose p90 TTFT grows with the rate (the SLO: p90 TTFT <= 1000 ms), its
    records and its saved draws, as the latency stage writes them."""
    from evalkit.metrics import traffic as tr

    rng = np.random.default_rng(seed)
    pts = [tr.RatePoint(rate, False, {"ttft_ms": [ms * (1 + 0.1 * rng.standard_normal(80))]})
           for rate, ms in ttft_ms_at.items()]
    cap = tr.capacity_at_slo(pts, {"ttft_ms": 1000.0}, seed=seed)
    fields = dict(variant="w8", scheme="w8a8_int8", method="rtn", stage="latency",
                  mode="capacity", load="poisson", workload="chat", unit="req/s",
                  higher_is_better=True, n=len(pts))
    rows = [dict(metric=m, stat=s, value=v, **fields)
            for m in ("capacity_req_s", "capacity_req_s_per_gpu")
            for s, v in (("value", cap.value), ("ci_low", cap.ci_low), ("ci_high", cap.ci_high))]
    old = rec.read_records(run / "records.parquet")
    new = rec.make_records(rows, run_id=run.name, study="study", model="m")
    rec.write_records(pd.concat([old, new], ignore_index=True), run / "records.parquet")
    (run / "raw/latency/w8/capacity_chat.json").write_text(json.dumps(
        {"value": cap.value, "censored": cap.censored, "gpus": 1,
         "draws": [float(d) for d in cap.draws]}))
    return run


def test_capacity_fall_beyond_its_draws_is_flagged(tmp_path, capsys):
    c, t = _correct(0.6), _ttft(0.2, 0.05)
    a = _with_capacity(make_run(tmp_path, "a", correct=c, ttft_s=t,
                                created="2026-01-01T00:00:00"), {4: 300, 8: 800, 12: 1400})
    b = _with_capacity(make_run(tmp_path, "b", correct=c, ttft_s=t,
                                created="2026-01-02T00:00:00"), {4: 600, 8: 1300, 12: 2000},
                       seed=1)
    df = cmp.compare_runs(a, b)
    cap = _row(df, "capacity", "capacity_req_s_per_gpu")
    va = float(rec.load_runs(a).query("metric == 'capacity_req_s_per_gpu' and stat == 'value'")
               ["value"].iloc[0])
    assert cap["value_a"] == va and cap["value_b"] < va
    assert cap["ci_high"] < 0 and cap["regression"] and "fewer req/s" in cap["note"]
    assert "draws" in cap["method"]
    # the other way round it is a gain, never a regression; a run against itself: 0 inside
    assert not _row(cmp.compare_runs(b, a), "capacity", "capacity_req_s_per_gpu")["regression"]
    same = _row(cmp.compare_runs(a, a), "capacity", "capacity_req_s_per_gpu")
    assert same["change"] == 0 and same["ci_low"] < 0 < same["ci_high"]
    assert main(["compare", str(a), str(b)]) == 5
    assert "chat capacity at SLO" in capsys.readouterr().out


def test_censored_capacity_gets_no_interval(tmp_path):
    c, t = _correct(0.6), _ttft(0.2, 0.05)
    a = _with_capacity(make_run(tmp_path, "a", correct=c, ttft_s=t,
                                created="2026-01-01T00:00:00"), {4: 300, 8: 800, 12: 1400})
    b = _with_capacity(make_run(tmp_path, "b", correct=c, ttft_s=t,
                                created="2026-01-02T00:00:00"), {4: 100, 8: 200, 12: 300})
    cap = _row(cmp.compare_runs(b, a), "capacity", "capacity_req_s_per_gpu")
    assert math.isnan(cap["ci_low"]) and not cap["regression"]
    assert "A above" in cap["note"]  # b met the SLO at every rate: a lower bound


REFERENCE = Path(__file__).resolve().parents[2] / "outputs" / "reference"


def test_two_sittings_of_the_rag_study_compared_over_windows_and_draws():
    """The RAG study's two H100 sittings measured W4A16 with the same prompts and engine:
    a rate point's compared p50 is its record's (the steady-state window, not every request
    sent), and the capacity change carries an interval from both runs' draws."""
    a = REFERENCE / "hopper-llama8b-schemes-rag" / "r1"
    b = REFERENCE / "hopper-llama8b-schemes-rag-int8" / "r1"
    df = cmp.compare_runs(a, b, resamples=300)
    rate = df[(df["stage"] == "latency") & (df["metric"] == "ttft_ms")
              & (df["request_rate"] == 14.1)].iloc[0]
    for run, col in ((a, "value_a"), (b, "value_b")):
        recs = rec.load_runs(run)
        want = recs[(recs["variant"] == "w4a16") & (recs["metric"] == "ttft_ms")
                    & (recs["stat"] == "p50") & (recs["request_rate"] == 14.1)
                    & (recs["mode"] == "server")]["value"]
        assert rate[col] == pytest.approx(float(want.iloc[0]))
    cap = _row(df, "capacity", "capacity_req_s_per_gpu")
    assert cap["variant"] == "w4a16" and cap["ci_low"] <= cap["change"] <= cap["ci_high"]
    table = cmp.summary_table(df)
    assert "rag 14.1 req/s (cap 64)" in set(table["what"])


def test_request_samples_of_a_rate_point_are_its_window():
    """The per-request values read back for a rate point are the requests its records
    summarise (the steady-state window of each trial), not every request sent."""
    from evalkit.stages.latency.raw import request_samples  # noqa: PLC0415

    run = REFERENCE / "hopper-llama8b-schemes-rag-int8" / "r1"
    s = request_samples(run)
    recs = rec.load_runs(run)
    for metric in ("ttft_ms", "tpot_ms"):
        got = s[(s["variant"] == "w4a16") & (s["request_rate"] == 14.1)
                & (s["metric"] == metric)]["value"]
        want = recs[(recs["variant"] == "w4a16") & (recs["metric"] == metric)
                    & (recs["request_rate"] == 14.1) & (recs["mode"] == "server")]
        p50 = want[want["stat"] == "p50"].iloc[0]
        assert len(got) == int(p50["n"])
        assert float(np.percentile(got, 50)) == pytest.approx(float(p50["value"]))


def test_request_samples_without_rate_points_keep_the_closed_loop_points():
    """A report reads the concurrency points' requests only: ``rate_points=False`` leaves
    the rate sweep out and returns the closed-loop points' values unchanged."""
    from evalkit.stages.latency.raw import request_samples  # noqa: PLC0415

    run = REFERENCE / "hopper-llama8b-schemes-rag-int8" / "r1"
    every = request_samples(run)
    closed = request_samples(run, rate_points=False)
    rate = every["request_rate"].astype(float) != math.inf
    assert rate.any() and (closed["request_rate"].astype(float) == math.inf).all()
    pd.testing.assert_frame_equal(closed, every[~rate].reset_index(drop=True))
