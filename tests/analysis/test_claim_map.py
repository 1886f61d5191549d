"""The claim map: reductions over prompt length x batch and the claim's two readings, from
hand-checkable points (each iteration's time given, so every reduction is known exactly)."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest

from evalkit.analysis import claim_map as cm
from evalkit.analysis.claims import claim_verdict, speed_reading_reduction
from evalkit.metrics.points import POINT_COLUMNS

matplotlib.use("Agg")

#: reference and variant time (ms) per (prompt length, batch): TTFT, TPOT
TIMES = {
    (256, 1): ((100.0, 10.0), (40.0, 5.0)),    # TTFT -60 %: latency reading holds; TPOT -50 %
    (256, 8): ((200.0, 10.0), (120.0, 6.0)),   # TTFT -40 %: only the speed reading (36.7 %)
    (4096, 1): ((400.0, 10.0), (280.0, 9.0)),  # TTFT -30 %: neither; TPOT -10 %
    (4096, 8): ((800.0, 10.0), (880.0, 12.0)),  # slower
}


def _points_and_samples(invalid: tuple[int, int] | None = None):
    points, samples = [], []
    for (length, batch), times in TIMES.items():
        for variant, (ttft, tpot) in zip(("w4a16", "w4a8_fp8"), times, strict=True):
            bad = invalid == (length, batch) and variant == "w4a8_fp8"
            row = dict.fromkeys(POINT_COLUMNS, math.nan)
            row.update(variant=variant, scheme=variant, mode="offline", workload=f"p{length}",
                       input_len=length, output_len=64, concurrency=batch,
                       regime="offline throughput", hardware="NVIDIA H100 80GB HBM3",
                       other_host=False, trials=3, single_trial=False,
                       status="invalid" if bad else "ok",
                       note="TTFT below the prefill floor" if bad else "",
                       ttft_ms=ttft, tpot_ms=tpot, e2el_ms=ttft + 63 * tpot)
            points.append(row)
            for trial, wobble in enumerate((-0.005, 0.0, 0.005)):
                for metric, value in (("ttft_ms", ttft), ("tpot_ms", tpot)):
                    samples.append({"variant": variant, "mode": "offline",
                                    "workload": f"p{length}", "concurrency": batch,
                                    "trial": trial, "metric": metric,
                                    "value": value * (1 + wobble)})
    return pd.DataFrame(points, columns=POINT_COLUMNS), pd.DataFrame(samples)


def test_speed_reading_is_the_reduction_a_rate_increase_means():
    assert speed_reading_reduction(58) == pytest.approx(36.708, abs=1e-3)
    assert speed_reading_reduction(45) == pytest.approx(31.034, abs=1e-3)
    assert speed_reading_reduction(0) == 0.0
    with pytest.raises(ValueError, match="not a rate"):
        speed_reading_reduction(-100)


def test_claim_map_cells_and_both_readings():
    points, samples = _points_and_samples()
    table = cm.claim_map(points, samples, variant="w4a8_fp8", reference="w4a16")
    assert len(table) == 8 and set(table["metric"]) == {"ttft_ms", "tpot_ms"}
    cells = cm.claim_cells(table, ttft_claim_pct=58, tpot_claim_pct=45).set_index(
        ["metric", "input_len", "batch"])
    first = cells.loc[("ttft_ms", 256, 1)]
    assert first["reduction_pct"] == pytest.approx(60.0, abs=0.01)
    assert first["speedup"] == pytest.approx(2.5)
    assert first["ci_low_pct"] <= 60.0 <= first["ci_high_pct"]
    assert (first["latency_reading"], first["speed_reading"]) == ("holds", "holds")
    mid = cells.loc[("ttft_ms", 256, 8)]
    assert (mid["latency_reading"], mid["speed_reading"]) == ("partly", "holds")
    low = cells.loc[("ttft_ms", 4096, 1)]
    assert (low["latency_reading"], low["speed_reading"]) == ("partly", "partly")
    slower = cells.loc[("ttft_ms", 4096, 8)]
    assert slower["reduction_pct"] == pytest.approx(-10.0, abs=0.01)
    assert slower["latency_reading"] == "not reproduced"
    assert cm.reduction_words(slower["reduction_pct"]) == "10 % slower"
    tpot = cells.loc[("tpot_ms", 256, 1)]
    assert tpot["claimed_pct"] == 45 and tpot["latency_reading"] == "holds"

    summary = cm.claim_map_summary(cells.reset_index()).set_index("metric")
    assert summary.loc["ttft_ms", "best_at"] == "256 tokens x batch 1"
    assert summary.loc["ttft_ms", "worst_at"] == "4096 tokens x batch 8"
    assert summary.loc["ttft_ms", "latency_reading_holds"] == 1
    assert summary.loc["ttft_ms", "speed_reading_holds"] == 2


def test_invalid_cells_carry_no_verdict_and_are_not_coloured():
    points, samples = _points_and_samples(invalid=(256, 1))
    cells = cm.claim_cells(cm.claim_map(points, samples, variant="w4a8_fp8",
                                        reference="w4a16"),
                           ttft_claim_pct=58, tpot_claim_pct=None)
    bad = cells[(cells["input_len"] == 256) & (cells["batch"] == 1)]
    assert set(bad[bad["metric"] == "ttft_ms"]["latency_reading"]) == {"invalid"}
    assert set(cells[cells["metric"] == "tpot_ms"]["speed_reading"]) <= {"no claim"}
    lengths, batches, grid = cm.claim_map_grid(cells, "ttft_ms")
    assert (lengths, batches) == ([256, 4096], [1, 8])
    assert math.isnan(grid[0, 0]) and grid[1, 1] == pytest.approx(-10.0, abs=0.01)


def test_plot_frames_the_cells_where_a_reading_holds():
    points, samples = _points_and_samples(invalid=(4096, 8))
    cells = cm.claim_cells(cm.claim_map(points, samples, variant="w4a8_fp8",
                                        reference="w4a16"),
                           ttft_claim_pct=58, tpot_claim_pct=45)
    fig = cm.plot_claim_map(cells, title="W4A8-FP8 vs W4A16")
    ttft_ax, tpot_ax = fig.axes[:2]
    texts = [t.get_text() for t in ttft_ax.texts]
    assert "invalid" in texts and any(t.startswith("60 % faster") for t in texts)
    ttft = cells[(cells["metric"] == "ttft_ms") & cells["valid"]]
    holds = ((ttft["latency_reading"] == "holds") | (ttft["speed_reading"] == "holds")).sum()
    assert len(ttft_ax.patches) == holds == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()][0].startswith("latency reading")
    # no frame and no contour of a style: no legend entry for it
    never = cells.assign(latency_reading="partly", speed_reading="partly")
    never = never[never["input_len"] == 256]  # one row of cells: no contour either
    assert not cm.plot_claim_map(never).legends


def test_no_shared_point_is_an_error():
    points, samples = _points_and_samples()
    with pytest.raises(ValueError, match="no TTFT or TPOT point"):
        cm.plot_claim_map(cm.claim_cells(
            cm.claim_map(points[points["variant"] == "w4a16"], samples, variant="w4a8_fp8",
                         reference="w4a16"), ttft_claim_pct=58, tpot_claim_pct=45))


@pytest.mark.slow
def test_claim_maps_from_a_real_offline_grid(tmp_path):
    """Two engines of one tiny checkpoint measured over 2 prompt lengths x 2 batches on this
    CPU: the map has every cell, each valid, and the figure draws from real records."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    from evalkit.core.config import StudyConfig
    from evalkit.core.run import Run
    from evalkit.metrics.points import latency_points
    from evalkit.stages.latency.raw import request_samples
    from evalkit.stages.latency.stage import raise_for_failures, run_stage

    ckpt = build_tiny_llama()
    cfg = StudyConfig.model_validate({
        "study": "t", "model": {"source": "hf_dir", "path": str(ckpt)},
        "variants": [{"name": "base", "scheme": "base"}, {"name": "again", "scheme": "base"}],
        "latency": {"modes": ["offline"], "offline_iters": 3, "warmups": 1,
                    "workloads": [{"name": "p32", "input_len": 32, "output_len": 8},
                                  {"name": "p128", "input_len": 128, "output_len": 8}],
                    "concurrency": [1, 4]},
        "claims": [{"name": "c", "text": "again is 58 % faster", "source": "a test",
                    "variant": "again", "reference": "base", "ttft_reduction_pct": 58,
                    "tpot_reduction_pct": 45, "hardware": "any"}],
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.1,
                   "max_model_len": 256, "startup_timeout_s": 300},
        "output_root": str(tmp_path),
    })
    run = Run(tmp_path / "t" / "r1")
    for d in ("records", "raw", "units", "logs"):
        (run.path / d).mkdir(parents=True)

    class Model:
        name, path, load_format = "tiny", ckpt, None

    result = run_stage(cfg, run, checkpoints={"base": ckpt, "again": ckpt}, resolved=Model)
    raise_for_failures(cfg, result)
    points = latency_points(result.records, gpus_per_engine=0)
    samples = request_samples(run.path)
    maps = cm.claim_maps(points, samples, cfg.claims)
    assert [(v, r) for v, r, _ in maps] == [("again", "base")]
    cells = maps[0][2]
    assert len(cells) == 8 and cells["valid"].all()
    assert set(zip(cells["input_len"], cells["batch"], strict=True)) == {
        (32, 1), (32, 4), (128, 1), (128, 4)}
    # every interval is finite, and each cell's reading in both readings is the verdict of its
    # own interval (not whether the claim is met: the same checkpoint twice should not meet
    # it, but on a shared CPU one engine's points can run 2x slower than the other's)
    assert cells[["ci_low_pct", "ci_high_pct"]].notna().all().all()
    tol = cfg.claims[0].tolerance_pct
    for reading in ("latency", "speed"):
        expected = [claim_verdict(lo, hi, thr, tol) for lo, hi, thr in zip(
            cells["ci_low_pct"], cells["ci_high_pct"], cells[f"{reading}_threshold_pct"],
            strict=True)]
        assert list(cells[f"{reading}_reading"]) == expected
    fig = cm.plot_claim_map(cells, title="again vs base")
    assert len(fig.axes) == 3  # TTFT, TPOT, colour bar

    # the report's cell draws the same map from the run directory
    from evalkit.analysis.load import load_report
    from evalkit.ui.cells.report import plot_claim_maps

    run.write_stage_records("latency", result.records)
    shown = plot_claim_maps(load_report(cfg, run))
    assert shown.name == "claim-map-again-vs-base" and "again vs base" in shown.svg
    assert "claim holds at 0 (latency reading)" in shown.caption
