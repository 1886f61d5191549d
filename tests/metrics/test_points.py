"""Latency points, point-by-point gains, goodput and the verdict text, on committed runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from retired_runs import retired_run

from evalkit.analysis import verdicts as vd
from evalkit.analysis.load import load_report
from evalkit.metrics import points as pts
from evalkit.stages.latency.raw import request_samples

REF = Path(__file__).resolve().parents[2] / "outputs" / "reference"
CLAIM = REF / "hopper-llama8b-claim" / "r1"


@pytest.fixture(scope="module")
def claim():
    df = pd.read_parquet(CLAIM / "records.parquet")
    s = request_samples(CLAIM)
    return df, s, pts.latency_points(df, samples=s)


@pytest.mark.parametrize(("mode", "inp", "c", "want"), [
    ("server", 1024, 1, "batch-1 decode"), ("server", 1024, 4, "low-concurrency serving"),
    ("server", 1024, 16, "high-concurrency serving"), ("server", 4096, 1, "long-prompt prefill"),
    ("server", 4096, 64, "long-prompt prefill"), ("offline", 1024, 1, "batch-1 decode"),
    ("offline", 4096, 256, "offline throughput"), ("offline", 1024, 2, "offline throughput"),
])
def test_regime_rules(mode, inp, c, want):
    assert pts.regime(mode, inp, c) == want
    assert want in pts.REGIMES


def test_points_of_the_claim_run(claim):
    df, _, p = claim
    assert len(p) == 24 and set(p["status"]) == {"ok"}
    server = p[p["mode"] == "server"]
    assert (server["trials"] == 3).all() and not server["single_trial"].any()
    assert not p["other_host"].any()
    # the band holds the p50 it belongs to
    assert ((server["ttft_lo"] <= server["ttft_ms"]) & (server["ttft_ms"] <= server["ttft_hi"])).all()
    one = p[(p["variant"] == "w4a16") & (p["mode"] == "server") & (p["workload"] == "chat")
            & (p["concurrency"] == 64)].iloc[0]
    rec = df[(df["variant"] == "w4a16") & (df["mode"] == "server") & (df["workload"] == "chat")
             & (df["concurrency"] == 64) & (df["metric"] == "tpot_ms") & (df["stat"] == "p50")]
    assert one["tpot_ms"] == pytest.approx(float(rec["value"].iloc[0]))
    assert one["output_tok_s_per_gpu"] == pytest.approx(one["output_throughput_tok_s"])


def test_old_runs_show_invalid_and_single_trial_points(tmp_path):
    df = pd.read_parquet(retired_run("hopper-llama8b-grid/r1", tmp_path) / "records.parquet")
    p = pts.latency_points(df)
    assert (p["status"] == "invalid").sum() > 0 and (p["status"] == "ok").sum() > 0
    assert p["single_trial"].all()  # measured before trials existed
    bad = p[p["status"] == "invalid"]
    assert bad["note"].str.len().gt(0).all()
    g = pts.point_gains(p, None, variant="w4a8_fp8", reference="w4a16")
    assert (g.loc[~g["valid"], "direction"] == "invalid").all()
    # without per-request data there is no interval, and the direction says so
    assert g.loc[g["valid"], "direction"].str.endswith("?").all()


def test_gain_directions_follow_their_intervals(claim):
    _, s, p = claim
    g = pts.point_gains(p, s, variant="w4a8_fp8", reference="w4a16")
    lat = g[g["metric"] != "output_throughput_tok_s"]
    assert lat["ci_low_pct"].notna().all()
    for r in lat.itertuples():
        assert r.ci_low_pct <= r.gain_pct + 1e-9 <= r.ci_high_pct + 2e-9 or r.mode == "server"
        want = "faster" if r.ci_low_pct > 0 else "slower" if r.ci_high_pct < 0 else "level"
        assert r.direction == want
    ttft = lat[lat["metric"] == "ttft_ms"]
    assert (ttft["direction"] == "faster").all()  # W4A8 prefills faster at every point here
    thr = g[g["metric"] == "output_throughput_tok_s"]
    ref = p[p["variant"] == "w4a16"].set_index(pts.KEY)["output_throughput_tok_s"]
    var = p[p["variant"] == "w4a8_fp8"].set_index(pts.KEY)["output_throughput_tok_s"]
    for r in thr.itertuples():
        k = (r.mode, r.workload, r.concurrency)
        assert r.gain_pct == pytest.approx((var[k] - ref[k]) / ref[k] * 100)


def test_slo_attainment_counts_requests_meeting_every_limit(claim):
    _, s, p = claim
    slo = {"ttft_ms": 1000.0, "tpot_ms": 20.0}
    att = pts.slo_attainment(s, slo)
    k = dict(variant="w4a16", mode="server", workload="chat", concurrency=64)
    sub = s[(s["variant"] == k["variant"]) & (s["mode"] == "server") & (s["workload"] == "chat")
            & (s["concurrency"] == 64)]
    w = sub.pivot_table(index=["trial", "request"], columns="metric", values="value")
    good = int(((w["ttft_ms"] <= 1000) & (w["tpot_ms"] <= 20)).sum())
    row = att[(att["variant"] == "w4a16") & (att["workload"] == "chat")
              & (att["concurrency"] == 64)].iloc[0]
    assert (row["requests"], row["good"]) == (len(w), good)
    gp = pts.goodput(p, s, slo)
    r = gp[(gp["variant"] == "w4a16") & (gp["workload"] == "chat") & (gp["concurrency"] == 64)]
    assert float(r["goodput_req_s"].iloc[0]) == pytest.approx(
        good / len(w) * float(r["request_throughput_req_s"].iloc[0]))
    assert (gp["goodput_req_s"] <= gp["request_throughput_req_s"] + 1e-12).all()
    assert pts.slo_attainment(s, {}).empty


def test_verdict_text_counts_what_the_gains_say(claim):
    _, s, p = claim
    g = pts.point_gains(p, s, variant="w4a8_fp8", reference="w4a16")
    sentence = vd.pair_sentence(g, "w4a8_fp8", "w4a16")
    assert "over 12 valid point(s) (8 server, 4 offline)" in sentence
    assert "TTFT lower at all 12 points" in sentence
    tpot = g[(g["metric"] == "tpot_ms")]
    n_up = int((tpot["direction"] == "faster").sum())
    n_down = int((tpot["direction"] == "slower").sum())
    phrase = vd.metric_phrase(g, "tpot_ms")
    assert f"lower at {n_up} " in phrase and f"higher at {n_down} " in phrase
    t = vd.regime_table(g, "w4a8_fp8", "w4a16")
    assert list(t["regime"]) == [r for r in pts.REGIMES if r in set(g["regime"])]
    b1 = t[t["regime"] == "batch-1 decode"].iloc[0]
    assert b1["decision"] == "w4a16" and b1["e2el_slower"] == 2  # decode-bound: W4A16 wins
    rec = vd.recommendation(g, "high-concurrency serving", "w4a8_fp8", "w4a16")
    assert rec.startswith("**high-concurrency serving** — **`w4a8_fp8`**")


def test_invalid_points_carry_no_verdict():
    g = pd.DataFrame({
        "mode": ["server"] * 2, "workload": ["chat"] * 2, "input_len": [1024] * 2,
        "output_len": [128] * 2, "concurrency": [1, 16],
        "regime": ["batch-1 decode", "high-concurrency serving"], "metric": ["e2el_ms"] * 2,
        "reference_value": [1.0, 1.0], "variant_value": [0.5, 0.5], "gain_pct": [50.0, 50.0],
        "ci_low_pct": [40.0, 40.0], "ci_high_pct": [60.0, 60.0],
        "direction": ["invalid", "invalid"], "valid": [False, False], "trials": [3, 3],
        "other_host": [False, False], "note": ["x: invalid", "x: invalid"]})
    assert "all 2 shared points are invalid" in vd.pair_sentence(g, "a", "b")
    assert vd.regime_table(g, "a", "b")["decision"].eq("no valid point").all()


def test_a_metric_level_at_every_point_says_so_in_words():
    """A metric level within its interval at every valid point reads as such ("at the one
    point", "at all N points"), not as a bare count."""
    def gains(n):
        return pd.DataFrame({
            "metric": ["ttft_ms"] * n, "valid": [True] * n, "gain_pct": [1.0] * n,
            "direction": ["level"] * n})

    assert vd.metric_phrase(gains(1), "ttft_ms") == "TTFT level within its interval at the one point"
    assert vd.metric_phrase(gains(3), "ttft_ms") == "TTFT level within its interval at all 3 points"
    mixed = pd.concat([gains(2), gains(1).assign(direction="faster", gain_pct=9.0)])
    assert vd.metric_phrase(mixed, "ttft_ms") == ("TTFT lower at 1 (9%), level within "
                                                  "its interval at 2")


def test_claims_do_not_apply_to_an_eager_gpu_engine(tmp_path):
    """A claim about serving speed is not judged on an eager engine (no CUDA graphs)."""
    from evalkit.core.run import open_run
    from evalkit.ui import sections

    run = open_run(retired_run("hopper-gemma/r1", tmp_path))
    cfg = run.config()
    assert cfg.engine.device == "cuda" and cfg.engine.enforce_eager
    r = load_report(cfg, run)
    md, summary, detail = sections.claims(r)
    assert len(detail) and not detail["applies"].any()
    assert detail["note"].str.contains("eager").all()
    assert "eager" in md and not summary["applies"].any()
    run8 = open_run(CLAIM)
    assert load_report(run8.config(), run8).claims_checked()["applies"].all()


def test_decision_words_are_the_regime_tables():
    assert str(vd.Decision("wins", "a", "b")) == "a"
    assert str(vd.Decision("wins", "b", "a", partial=True)) == "b (level at some points)"
    assert str(vd.Decision("depends")) == "depends on load"
    assert str(vd.Decision("level")) == "either (level)"
    assert str(vd.Decision("none")) == "no valid point"
