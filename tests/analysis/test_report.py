"""Report: joins, gains, Pareto frontier, claim verdicts and figures on seeded records."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from retired_runs import retired_run

from evalkit.analysis.claims import claim_check, claim_summary, claim_verdict
from evalkit.analysis.load import engine_scheme_caveats, load_report
from evalkit.analysis.plots import plot_metric_vs_load
from evalkit.analysis.quality import quality_per_variant
from evalkit.analysis.report_figures import (
    plot_accuracy_deltas,
    plot_quality_vs_speed,
    plot_speed_gains,
)
from evalkit.analysis.speed import (
    headline_gains,
    headline_table,
    latency_status,
    pareto_frontier,
    quality_speed,
)
from evalkit.core import records as rec
from evalkit.core.specs import Claim
from evalkit.metrics import points as pts
from evalkit.metrics.points import latency_points

LAT = {  # variant -> (ttft p50 at c=1, tpot p50 at c=1), c=4 is 1.5x / 1.2x
    "base": (100.0, 20.0), "w4a16": (80.0, 12.0), "w4a8_fp8": (30.0, 7.0),
    "fp8_dynamic": (60.0, 14.0),
}
ACC = {"base": 0.60, "w4a16": 0.58, "w4a8_fp8": 0.55, "fp8_dynamic": 0.60}


def _records(unsupported: tuple[str, ...] = ()) -> pd.DataFrame:
    rows = []
    for v, (ttft, tpot) in LAT.items():
        for c, f1, f2 in ((1, 1.0, 1.0), (4, 1.5, 1.2)):
            for m, val in (("ttft_ms", ttft * f1), ("tpot_ms", tpot * f2)):
                for stat, k in (("mean", 1.05), ("p50", 1.0), ("p90", 1.3), ("p99", 1.6)):
                    st = "unsupported" if v in unsupported else "ok"
                    rows.append(dict(variant=v, scheme=v, stage="latency", mode="server",
                                     workload="chat", concurrency=c, input_len=128,
                                     output_len=32, metric=m, stat=stat,
                                     value=float("nan") if st != "ok" else val * k, unit="ms",
                                     higher_is_better=False, status=st,
                                     note="no kernel" if st != "ok" else None,
                                     hardware="NVIDIA H100 80GB HBM3"))
        for task, off in (("arc_easy", 0.0), ("piqa", 0.1)):
            base = ACC["base"] + off
            val = ACC[v] + off
            rows.append(dict(variant=v, scheme=v, stage="accuracy", task=task, metric="acc",
                             stat="value", value=val, unit="fraction", higher_is_better=True,
                             n=500))
            if v != "base":
                d = val - base
                for stat, x in (("delta", d), ("ci_low", d - 0.02), ("ci_high", d + 0.02)):
                    rows.append(dict(variant=v, scheme=v, stage="accuracy", task=task,
                                     metric="acc", stat=stat, value=x, unit="fraction",
                                     higher_is_better=True, n=500))
    return rec.make_records(rows, run_id="r")


def test_latency_point_and_gains():
    df = _records()
    pt = headline_table(df, workload="chat", concurrency=1)
    g = headline_gains(pt, "w4a16").set_index("variant")
    assert g.loc["w4a8_fp8", "ttft_gain_vs_w4a16_pct"] == pytest.approx((80 - 30) / 80 * 100)
    assert g.loc["w4a8_fp8", "tpot_gain_vs_w4a16_pct"] == pytest.approx((12 - 7) / 12 * 100)
    assert g.loc["w4a16", "ttft_gain_vs_w4a16_pct"] == pytest.approx(0)


def test_quality_per_variant_combines_tasks():
    q = quality_per_variant(_records()).set_index("variant")
    assert q.loc["w4a8_fp8", "quality_delta"] == pytest.approx(-0.05)
    # two tasks, half-width 0.02 each: sqrt(2 * 0.02^2) / 2
    h = math.sqrt(2 * 0.02**2) / 2
    assert q.loc["w4a8_fp8", "quality_ci_high"] == pytest.approx(-0.05 + h)
    assert q.loc["fp8_dynamic", "docs"] == 1000


def test_pareto_frontier():
    pts = pd.DataFrame({"x": [0, 10, 20, 5, np.nan], "y": [0, -1, -3, -2, 1]})
    mask = pareto_frontier(pts, x="x", y="y")
    assert mask.tolist() == [True, True, True, False, False]
    mask = pareto_frontier(pts, x="x", y="y", x_higher_better=False)
    assert mask.tolist() == [True, False, False, False, False]


def test_quality_speed_table_marks_unsupported():
    df = _records(unsupported=("w4a8_fp8",))
    t = quality_speed(df, workload="chat", concurrency=1, reference="w4a16").set_index("variant")
    assert t.loc["w4a8_fp8", "latency_status"].startswith("unsupported: no kernel")
    assert math.isnan(t.loc["w4a8_fp8", "ttft_ms"])
    assert t.loc["base", "quality_delta"] == 0
    assert t.loc["w4a16", "ttft_gain_vs_base_pct"] == pytest.approx(20.0)


def test_variant_with_only_roofline_rows_is_not_measured():
    """An interrupted sweep: a variant with a roofline bound but no measured point."""
    df = _records()
    df = df[df["variant"] != "fp8_dynamic"]
    roof = rec.make_records([dict(variant="fp8_dynamic", scheme="fp8_dynamic", stage="latency",
                                  metric="roofline_tpot_ms", stat="value", value=2.0, unit="ms",
                                  higher_is_better=False)], run_id="r")
    status = latency_status(rec.combine([df, roof]))
    assert status["fp8_dynamic"] == "not measured"
    assert status["w4a16"] == "ok"


def _claim(**kw):
    base = dict(name="c", text="W4A8 58% faster TTFT", variant="w4a8_fp8", reference="w4a16",
                ttft_reduction_pct=58, tpot_reduction_pct=45, hardware="hopper")
    return Claim(**{**base, **kw})


def _samples(df: pd.DataFrame, spread: float = 0.001, n: int = 41) -> pd.DataFrame:
    """Per-request values whose median is each point's p50 record, +-``spread`` around it."""
    p50 = df[(df["stage"] == "latency") & (df["stat"] == "p50") & (df["status"] == "ok")
             & df["metric"].isin(["ttft_ms", "tpot_ms"])]
    rows = [dict(variant=r.variant, mode=r.mode, workload=r.workload, concurrency=r.concurrency,
                 request_rate=np.inf, trial=0, metric=r.metric, value=r.value * (1 + f))
            for r in p50.itertuples() for f in np.linspace(-spread, spread, n)]
    return pd.DataFrame(rows)


def test_claim_check_verdicts():
    df = _records()
    checks = claim_check(df, [_claim()], hardware="NVIDIA H100 80GB HBM3",
                            samples=_samples(df))
    ttft = checks[checks["metric"] == "ttft_ms"].set_index("concurrency")
    # c=1: (80-30)/80 = 62.5% >= 58 -> holds; c=4 same ratios -> holds
    assert ttft.loc[1, "measured_pct"] == pytest.approx(62.5)
    assert set(ttft["verdict"]) == {"holds"}
    tpot = checks[checks["metric"] == "tpot_ms"]
    # (12-7)/12 = 41.7% vs claimed 45 with 10% tolerance (>= 40.5) -> holds
    assert set(tpot["verdict"]) == {"holds"}
    assert (checks["ci_low_pct"] < checks["measured_pct"]).all()
    assert (checks["measured_pct"] < checks["ci_high_pct"]).all()
    strict = claim_check(df, [_claim(tolerance_pct=0)], hardware="H100", samples=_samples(df))
    assert set(strict.loc[strict["metric"] == "tpot_ms", "verdict"]) == {"partly"}
    # without per-request data no interval, so no verdict either way
    assert set(claim_check(df, [_claim()], hardware="H100")["verdict"]) == {"inconclusive"}
    assert checks["applies"].all()
    cpu = claim_check(df, [_claim()], hardware="CPU: Xeon")
    assert not cpu["applies"].any()


def test_claim_not_reproduced_and_summary():
    df = _records()
    c = _claim(variant="base", reference="w4a8_fp8")  # base is slower: negative reduction
    checks = claim_check(df, [c], hardware="H100", samples=_samples(df))
    assert set(checks["verdict"]) == {"not reproduced"}
    s = claim_summary(checks)
    assert set(s["verdict"]) == {"not reproduced"}
    assert (s["holds_at"] == "-").all()
    s2 = claim_summary(claim_check(df, [_claim()], hardware="H100", samples=_samples(df)))
    assert set(s2["verdict"]) == {"holds"}
    assert "chat@c1" in s2["holds_at"].iloc[0]


def test_claim_check_reads_offline_batches_too():
    """An offline-only study (whole batches through vllm.LLM) is checked per batch size."""
    df = _records()
    off = df[(df["stage"] == "latency") & (df["concurrency"] == 4)].copy()
    off["mode"] = "offline"
    off.loc[(off["variant"] == "w4a8_fp8") & (off["metric"] == "tpot_ms"), "value"] *= 3
    checks = claim_check(off, [_claim()], hardware="NVIDIA H200", samples=_samples(off))
    assert set(checks["mode"]) == {"offline"} and set(checks["concurrency"]) == {4}
    tpot = checks[checks["metric"] == "tpot_ms"].iloc[0]
    assert tpot["verdict"] == "not reproduced"  # 3x slower decode at batch 4
    s = claim_summary(checks).set_index("metric")
    assert s.loc["ttft_ms", "holds_at"] == "chat@b4" and s.loc["tpot_ms", "points"] == 1
    both = claim_check(rec.combine([df, off]), [_claim()], hardware="NVIDIA H200")
    assert both.groupby("mode").size().to_dict() == {"offline": 2, "server": 4}


def test_claim_verdict_needs_the_interval_to_decide():
    # measured 41.7% TPOT reduction against a 45% claim (threshold 40.5 with 10% tolerance)
    assert claim_verdict(41.0, 42.5, 45, 10) == "holds"
    assert claim_verdict(35.0, 42.5, 45, 10) == "inconclusive"  # contains the threshold
    assert claim_verdict(5.0, 30.0, 45, 10) == "partly"
    assert claim_verdict(-5.0, 30.0, 45, 10) == "not reproduced"  # could be no gain at all
    assert claim_verdict(-20.0, -3.0, 45, 10) == "not reproduced"
    df = _records()
    wide = claim_check(df, [_claim()], hardware="H100", samples=_samples(df, spread=0.5))
    # 41.7% measured, 40.5% needed: with +-50% noise per request the interval cannot decide
    assert set(wide.loc[wide["metric"] == "tpot_ms", "verdict"]) == {"inconclusive"}


def test_invalid_points_are_left_out_of_the_claim():
    df = _records()
    bad = (df["variant"] == "w4a8_fp8") & (df["concurrency"] == 4) & (df["metric"] == "ttft_ms")
    df.loc[bad, "status"] = "invalid"
    df.loc[bad, "note"] = "INVALID: 98.4% of prompt tokens were served from the prefix cache"
    checks = claim_check(df, [_claim()], hardware="H100", samples=_samples(df))
    at4 = checks[(checks["metric"] == "ttft_ms") & (checks["concurrency"] == 4)].iloc[0]
    assert at4["verdict"] == "invalid" and "prefix cache" in at4["note"]
    assert math.isnan(at4["measured_pct"])
    s = claim_summary(checks).set_index("metric")
    assert s.loc["ttft_ms", "verdict"] == "holds" and s.loc["ttft_ms", "points"] == 1
    assert s.loc["ttft_ms", "counts"] == "1 holds, 1 invalid"


def test_claim_unmeasured_variant():
    df = _records(unsupported=("w4a8_fp8",))
    checks = claim_check(df, [_claim()], hardware="H100")
    assert set(checks["verdict"]) == {"not measured"}


def test_figures_are_pure_and_complete():
    df = _records()
    t = quality_speed(df, workload="chat", concurrency=4, reference="w4a16")
    fig = plot_quality_vs_speed(t, gain_col="ttft_gain_vs_base_pct", caption="cap")
    ax = fig.axes[0]
    labels = {a.get_text() for a in ax.texts}
    assert {"base", "w4a16", "w4a8_fp8", "fp8_dynamic"} <= labels
    assert any(line.get_label().startswith("Pareto frontier") for line in ax.lines)
    points = latency_points(df, gpus_per_engine=1)
    fig2 = plot_metric_vs_load(points, metric="tpot_ms")
    assert len(fig2.axes[0].lines) >= 4
    fig3 = plot_accuracy_deltas(df)
    assert len(fig3.axes[0].collections) >= 1
    import matplotlib.pyplot as plt

    plt.close("all")


# ---- real Hopper runs (outputs/reference/) --------------------------------------------------



def test_offline_engines_carry_their_kernels_and_a_substitution(tmp_path):
    """An offline-only run has no server start record: the report's engine provenance and the
    kernel-substitution caveat come from each offline engine's log (offline-provenance.json).
    Read on the committed claim map (five schemes, offline), then with W8A8-INT8's log edited
    to say vLLM ran it with the FP8 scheme."""
    import json
    import shutil

    from evalkit.core.run import open_run
    from evalkit.ui import sections

    src = Path(__file__).resolve().parents[2] / "outputs/reference/hopper-llama8b-claim-map/r1"
    run_dir = shutil.copytree(src, tmp_path / "r1")
    run = open_run(run_dir)
    rep = load_report(run.config(), run)
    assert not [c for c in rep.caveats if "vLLM ran" in c]
    lines = sections.environment_markdown(rep)
    for v, kernel in [("w4a16", "MacheteLinearKernel"), ("w4a8_fp8", "CutlassW4A8LinearKernel"),
                      ("w8a8_int8", "CutlassInt8ScaledMMLinearKernel"),
                      ("fp8_dynamic", "CutlassFP8ScaledMMLinearKernel")]:
        assert f"`{v}` (offline engine): linear_kernels={kernel}" in lines, lines
    assert "cuda_graphs=on" in lines and "`bf16` (offline engine)" in lines
    prov_file = run_dir / "raw/latency/w8a8_int8/offline-provenance.json"
    prov = json.loads(prov_file.read_text(encoding="utf-8"))
    prov["engine_log"]["linear_kernels"] = ("CutlassFP8ScaledMMLinearKernel for "
                                            "CompressedTensorsW8A8Fp8")
    prov_file.write_text(json.dumps(prov), encoding="utf-8")
    rep = load_report(run.config(), run)
    cav = [c for c in rep.caveats if "vLLM ran" in c]
    assert len(cav) == 1 and cav[0].startswith("w8a8_int8: vLLM ran W8A8-INT8"), rep.caveats


def test_activation_mismatch_names_the_other_scheme():
    from evalkit.core.schemes import activation_mismatch

    # vLLM 0.24 on an H200 ran the int8-activation W4A8 checkpoint with its FP8 W4A8 scheme
    why = activation_mismatch("w4a8_int8", "CutlassW4A8LinearKernel for CompressedTensorsW4A8Fp8")
    assert why and "CompressedTensorsW4A8Fp8 (fp8 activations)" in why and "W4A8-INT8" in why
    # the matching schemes, on CPU and GPU, and text without a scheme class say nothing
    for scheme, line in [
        ("w4a8_int8", "CPUWNA16LinearKernel for CompressedTensorsWNA8Int"),
        ("w4a8_fp8", "CutlassW4A8LinearKernel for CompressedTensorsW4A8Fp8"),
        ("fp8_dynamic", "CutlassFP8ScaledMMLinearKernel for CompressedTensorsW8A8Fp8"),
        ("w8a8_int8", "CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8"),
        ("w4a16", "MacheteLinearKernel for CompressedTensorsWNA16"),
        ("w4a16", "CPUWNA16LinearKernel for mixed-precision linear"),
        ("base", "CutlassW4A8LinearKernel for CompressedTensorsW4A8Fp8"),
    ]:
        assert activation_mismatch(scheme, line) is None, (scheme, line)


def test_interrupted_accuracy_stage_rebuilt_with_its_hardware(tmp_path):

    from evalkit.core.run import open_run
    from evalkit.stages import accuracy

    run_dir = retired_run("hopper-gemma/r1", tmp_path / "git")
    # cut off after 4 of 6 variants: no stage records, the last two variants' units unfinished
    (run_dir / "records/accuracy.parquet").unlink()
    for marker in [*run_dir.glob("units/accuracy/w4a16_*.json"),
                   *run_dir.glob("units/accuracy/w4a8_fp8_*.json")]:
        marker.unlink()
    run = open_run(run_dir)
    df = accuracy.rebuild_records(run)
    assert set(df.variant) == {"base", "w8a8_int8", "w4a8_int8", "fp8_dynamic"}
    assert df.groupby("variant").task.nunique().eq(5).all()
    assert set(df.hardware) == {"NVIDIA H200"}  # from env.json, not this machine
    ae = df[(df.task == "arc_easy") & (df.metric == "acc")].pivot(
        index="variant", columns="stat", values="value")
    paired = ae.dropna(subset=["delta"])
    assert set(paired.index) == {"w8a8_int8", "w4a8_int8", "fp8_dynamic"}
    assert (paired.ci_low <= paired.delta).all() and (paired.delta <= paired.ci_high).all()
    # delta = variant - base on the same 300 documents
    np.testing.assert_allclose(paired.delta, paired.value - ae.loc["base", "value"])
    # the report names the variant vLLM ran with another scheme's activations
    records = run.records()
    records = records[records["stage"] != "quality"]
    cav = engine_scheme_caveats(run.config(), records)
    assert len(cav) == 1 and cav[0].startswith("w4a8_int8: vLLM ran W4A8-INT8")
    assert "KL divergence" not in cav[0]
    # its quality figures, measured with transformers, are the checkpoint's own: said so
    quality = records.iloc[:1].assign(stage="quality", variant="w4a8_int8", backend="hf",
                                      metric="kld_nats", stat="mean")
    cav = engine_scheme_caveats(run.config(), pd.concat([records, quality]))
    assert len(cav) == 1 and ("its KL divergence, top-1 agreement and perplexity were measured "
                              "with transformers from the checkpoint's own quantization "
                              "config") in cav[0]


def test_roofline_view_reads_the_per_point_percentages(tmp_path):
    """The % of roofline records are per point (mean TPOT); the view shows best and worst."""
    from evalkit.core.run import open_run
    from evalkit.ui import sections

    run = open_run(retired_run("hopper-llama70b-8bit/r1", tmp_path))
    _, t = sections.roofline(load_report(run.config(), run))
    t = t.set_index("variant")
    assert set(t.index) == {"fp8_dynamic", "w8a8_int8", "w4a16"}
    assert t["best_tpot_pct_of_roofline"].notna().all()
    assert ((t["worst_tpot_pct_of_roofline"] > 0)
            & (t["worst_tpot_pct_of_roofline"] <= t["best_tpot_pct_of_roofline"])
            & (t["best_tpot_pct_of_roofline"] < 100)).all()
    # 8-bit linear weights, twice the 4-bit bytes (embeddings and output layer stay bf16)
    assert t.loc["fp8_dynamic", "roofline_tpot_ms"] == pytest.approx(
        1.84 * t.loc["w4a16", "roofline_tpot_ms"], rel=0.05)


def test_roofline_view_leaves_out_staggered_server_batches(tmp_path):
    """A server at concurrency > 1 does not decode its whole batch together: its per-point
    bound overstates the bytes (on the committed 8B grid it passed 100% at 128 x 4k tokens,
    a point now invalid for its cache hits), so the view's best/worst come from batch-1
    points there."""
    from evalkit.core.run import open_run
    from evalkit.ui import sections

    run = open_run(retired_run("hopper-llama8b-grid/r1", tmp_path))
    df = run.records()
    pct = df[df["metric"] == "tpot_pct_of_roofline"]
    assert len(pct[pct["concurrency"] == 1]) == 5  # the valid points of that run
    batch1 = pct[pct["concurrency"] == 1].groupby("variant")["value"]
    _, t = sections.roofline(load_report(run.config(), run))
    t = t.set_index("variant")
    assert set(t.index) == {"w4a16", "w4a8_fp8", "fp8_dynamic", "w8a8_int8", "bf16"}
    pd.testing.assert_series_equal(t["best_tpot_pct_of_roofline"].sort_index(),
                                   batch1.max().sort_index(), check_names=False,
                                   check_dtype=False)
    assert (t["best_tpot_pct_of_roofline"] < 100).all()


def test_speed_gain_legend_names_the_bars_it_shows():
    """Each legend entry belongs to the bars of its own column (the zero line has none)."""
    t = pd.DataFrame({"variant": ["w4a16", "w4a8_fp8"],
                      "ttft_gain_vs_bf16_pct": [10.0, 30.0],
                      "ttft_gain_vs_w4a16_pct": [0.0, 22.0]})
    fig = plot_speed_gains(t, gain_cols=["ttft_gain_vs_bf16_pct", "ttft_gain_vs_w4a16_pct"])
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["TTFT gain vs bf16 (%)", "TTFT gain vs w4a16 (%)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    for handle, col in zip(handles, ["ttft_gain_vs_bf16_pct", "ttft_gain_vs_w4a16_pct"],
                           strict=True):
        widths = sorted(round(p.get_width(), 6) for p in handle.patches)
        assert widths == sorted(t[col].tolist())  # the entry's bars carry that column's data


def test_trials_that_disagree_widen_the_interval():
    """Requests resampled within trials cannot show that one trial ran differently; the
    interval must contain every trial's own reduction."""
    df = _records()
    s = _samples(df)
    s = pd.concat([s.assign(trial=t) for t in range(3)], ignore_index=True)
    tight = claim_check(df, [_claim()], hardware="H100", samples=s)
    ttft1 = lambda c: c[(c["metric"] == "ttft_ms") & (c["concurrency"] == 1)].iloc[0]  # noqa: E731
    assert ttft1(tight)["verdict"] == "holds"  # 62.5% everywhere, threshold 52.2%
    slow = (s["variant"] == "w4a8_fp8") & (s["trial"] == 2) & (s["metric"] == "ttft_ms")
    s.loc[slow, "value"] *= 1.8  # one trial of the variant: 54 instead of 30 ms -> 32.5%
    wide = ttft1(claim_check(df, [_claim()], hardware="H100", samples=s))
    assert wide["ci_low_pct"] == pytest.approx(32.5, abs=0.5)
    assert wide["verdict"] == "inconclusive"
    assert pts.trial_gains(pd.DataFrame({"trial": [0, 1], "value": [10.0, 10.0]}),
                          pd.DataFrame({"trial": [0, 1], "value": [5.0, 8.0]})) == [50.0, 20.0]


def test_each_comparison_once_when_the_reference_is_base():
    """A study whose reference variant is base itself compares every variant with base once
    (the answer, the index line and the summary each speak of a pair once)."""
    from evalkit.analysis.report import Report

    def report(reference):
        return Report(records=_records(), study="s", model="m", hardware="cpu",
                      workload="chat", concurrency=1, reference=reference)

    assert report("base").comparisons() == [("w4a16", "base"), ("w4a8_fp8", "base"),
                                            ("fp8_dynamic", "base")]
    pairs = report("w4a16").comparisons()
    assert len(pairs) == len(set(pairs)) == 5 and ("w4a16", "base") in pairs
