"""Capacity at SLO in the report: the capacity table, the rate curves, the answer and the
points table, on a fake run with rate sweeps; and the committed runs without any."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from evalkit.analysis import capacity as cap  # noqa: E402
from evalkit.analysis import plots  # noqa: E402
from evalkit.analysis import report as rp  # noqa: E402
from evalkit.analysis.load import load_report  # noqa: E402
from evalkit.analysis.speed import default_point  # noqa: E402
from evalkit.core import records as rec  # noqa: E402
from evalkit.core.run import open_run  # noqa: E402
from evalkit.ui import (
    sections,  # noqa: E402
    views,  # noqa: E402
)
from evalkit.ui.cells import report as cells  # noqa: E402
from evalkit.ui.figures import Figure  # noqa: E402

VARIANTS = ("base", "w4a8")
WORKLOADS = {"chat": ("burst", 128, 32), "rag": ("closed", 1024, 64)}
RATES = (1.0, 2.0, 4.0)  # the top rate saturates
CAP = 256
HW = "CPU: Xeon"
SLO = {"ttft_ms": 1000.0, "tpot_ms": 50.0}
PRICE = 2.0  # USD per GPU-hour
#: (variant, workload) -> capacity value, ci, censoring, output tok/s per GPU (value, lo, hi)
CAPACITY = {
    ("base", "chat"): (2.0, 1.8, 2.2, "none", (60.0, 54.0, 66.0)),
    ("w4a8", "chat"): (3.0, 2.7, 3.3, "none", (90.0, 81.0, 99.0)),
    ("base", "rag"): (1.5, 1.2, 1.8, "none", (40.0, 32.0, 48.0)),
    ("w4a8", "rag"): (2.0, 2.0, 2.0, "above", (55.0, 50.0, 60.0)),
}
N_DRAWS = 400


def _draws(variant: str, workload: str) -> list[float]:
    value, lo, hi, censored, _ = CAPACITY[(variant, workload)]
    rng = np.random.default_rng(VARIANTS.index(variant) * 10 + list(WORKLOADS).index(workload))
    if censored == "above":
        return [value] * N_DRAWS
    return list(rng.normal(value, (hi - lo) / 4, N_DRAWS))


def _latency(variant: str, rate: float) -> tuple[float, float]:
    """p90 TTFT and TPOT (ms) of a rate point; the variant is 1.5x faster."""
    f = 1.0 if variant == "base" else 1 / 1.5
    return 200.0 * rate**2 * f, 20.0 * (1 + rate / 4) * f


def _records() -> pd.DataFrame:
    rows = []
    for v in VARIANTS:
        for wl, (load, il, ol) in WORKLOADS.items():
            common = dict(variant=v, scheme="w4a8_fp8" if v == "w4a8" else "base",
                          stage="latency", backend="vllm", workload=wl, input_len=il,
                          output_len=ol, hardware=HW)
            # anchors: the synchronous point and the throughput point (ordinary server points)
            for conc, scale in ((1, 0.5), (CAP, 4.0)):
                pt = dict(common, mode="server", load=load, concurrency=conc,
                          request_rate=math.inf)
                for m, base_ms in (("ttft_ms", 100.0), ("tpot_ms", 10.0)):
                    for stat, k in (("mean", 1.1), ("p50", 1.0), ("p90", 1.5), ("p99", 2.0),
                                    ("p50_ci_low", 0.9), ("p50_ci_high", 1.1)):
                        rows.append(dict(pt, metric=m, stat=stat, value=base_ms * scale * k,
                                         unit="ms", higher_is_better=False, n=40))
                rows.append(dict(pt, metric="output_throughput_tok_s", stat="value",
                                 value=50.0 * scale, unit="tok/s", higher_is_better=True))
            for rate in RATES:
                ttft90, tpot90 = _latency(v, rate)
                saturated = rate == RATES[-1]
                pt = dict(common, mode="server", load="poisson", concurrency=CAP,
                          request_rate=rate)
                for m, p90 in (("ttft_ms", ttft90), ("tpot_ms", tpot90),
                               ("e2el_ms", ttft90 + tpot90 * ol)):
                    for stat, k in (("mean", 0.7), ("p50", 0.6), ("p90", 1.0), ("p99", 1.3),
                                    ("p50_ci_low", 0.55), ("p50_ci_high", 0.65),
                                    ("p90_ci_low", 0.9), ("p90_ci_high", 1.1)):
                        rows.append(dict(pt, metric=m, stat=stat, value=p90 * k, unit="ms",
                                         higher_is_better=False, n=48))
                achieved = rate * (0.6 if saturated else 0.99)
                for metric, value, unit, note in (
                        ("offered_rate_req_s", rate, "req/s", None),
                        ("arrival_rate_req_s", rate * 1.02, "req/s", None),
                        ("achieved_rate_req_s", achieved, "req/s", None),
                        ("saturated", 1.0 if saturated else 0.0, "bool",
                         f"achieved {achieved:.3g} req/s < 0.9 x arrival" if saturated else ""),
                        ("window_requests", 48.0, "count",
                         "requests 6..53 of 60 by sending order"),
                        ("failed_requests", 3.0 if saturated else 0.0, "count", None),
                        ("output_throughput_tok_s", achieved * ol, "tok/s", None),
                        ("request_throughput_req_s", achieved, "req/s", None),
                        ("energy_j_per_output_token", math.nan, "J/token",
                         "not measured on a CPU")):
                    rows.append(dict(pt, metric=metric, stat="value", value=value, unit=unit,
                                     higher_is_better=None, note=note))
                rows.append(dict(pt, metric="power_w", stat="mean", value=math.nan, unit="W",
                                 higher_is_better=None, note="not measured on a CPU"))
            value, lo, hi, censored, tok = CAPACITY[(v, wl)]
            capc = dict(common, mode="capacity", load="poisson")
            note = ("every rate met the p90 limits (up to 2 req/s): capacity is at least the "
                    "top rate measured" if censored == "above" else
                    f"interpolated between 2 and 4 req/s (p90 TTFT above {SLO['ttft_ms']:g} ms)")
            for metric, vals, unit, hib in (
                    ("capacity_req_s", (value, lo, hi), "req/s", True),
                    ("capacity_req_s_per_gpu", (value, lo, hi), "req/s", True),
                    ("capacity_output_tok_s_per_gpu", tok, "tok/s", True),
                    ("cost_usd_per_m_output_tokens", tuple(PRICE / 3600 / t * 1e6
                                                           for t in (tok[0], tok[2], tok[1])),
                     "USD", False)):
                for stat, x in zip(("value", "ci_low", "ci_high"), vals, strict=True):
                    rows.append(dict(capc, metric=metric, stat=stat, value=x, unit=unit,
                                     higher_is_better=hib,
                                     note=note if (metric, stat) == ("capacity_req_s", "value")
                                     else None))
            rows.append(dict(capc, metric="energy_j_per_output_token", stat="value",
                             value=math.nan, unit="J/token", higher_is_better=False,
                             note="not measured on a CPU"))
    return rec.make_records(rows, run_id="r1", study="traffic", model="m")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "traffic" / "r1"
    for v in VARIANTS:
        for wl in WORKLOADS:
            value, lo, hi, censored, _ = CAPACITY[(v, wl)]
            f = d / "raw" / "latency" / v / f"capacity_{wl}.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({
                "value": value, "ci_low": lo, "ci_high": hi, "censored": censored,
                "draws": _draws(v, wl), "rates": list(RATES), "limits": SLO, "percentile": 90,
                "note": "fake"}))
    rec.write_records(_records(), d / "records.parquet")
    return d


def _report(run_dir: Path, reference: str | None = None, price: float | None = PRICE
            ) -> rp.Report:
    df = rec.load_runs(run_dir)
    wl, conc, mode = default_point(df, None, None)
    return rp.Report(records=df, study="traffic", model="m", hardware=HW, workload=wl,
                     concurrency=conc, reference=reference, base="base", mode=mode,
                     gpus_per_engine=0, slo=SLO, slo_percentile=90.0,
                     cost_per_gpu_hour_usd=price, run_path=run_dir)


def test_capacity_table_values_gain_and_cost(run_dir):
    t = _report(run_dir).capacity().set_index(["variant", "workload"])
    assert len(t) == 4 and set(t["reference"]) == {"base"}
    chat = t.loc[("w4a8", "chat")]
    assert (chat["req_s_per_gpu"], chat["req_s_per_gpu_lo"], chat["req_s_per_gpu_hi"]) == (
        3.0, 2.7, 3.3)
    # gain from the values; its interval from the index-paired draws, by hand
    assert chat["gain_pct"] == pytest.approx(50.0)
    ratio = (np.asarray(_draws("w4a8", "chat")) / np.asarray(_draws("base", "chat")) - 1) * 100
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    assert chat["gain_lo"] == pytest.approx(lo) and chat["gain_hi"] == pytest.approx(hi)
    assert 0 < chat["gain_lo"] < 50 < chat["gain_hi"]
    assert t.loc[("base", "chat"), "gain_note"] == "reference"
    # a variant that met the SLO at every rate: a lower bound on its gain
    rag = t.loc[("w4a8", "rag")]
    assert rag["censored"] == "above" and rag["gain_pct"] == pytest.approx(100 / 3)
    assert rag["gain_note"].startswith("a lower bound")
    # $ per million output tokens at capacity: price / 3600 / (tok/s per GPU) x 1e6
    assert chat["output_tok_s_per_gpu"] == 90.0
    assert chat["cost_usd_per_m_tokens"] == pytest.approx(PRICE / 3600 / 90 * 1e6)
    assert chat["cost_lo"] == pytest.approx(PRICE / 3600 / 99 * 1e6)  # the faster end
    assert chat["cost_hi"] == pytest.approx(PRICE / 3600 / 81 * 1e6)
    # energy on a CPU: not measured, never 0
    assert t["energy_j_per_token"].isna().all()
    assert set(t["energy_note"]) == {"not measured on a CPU"}
    assert set(t["slo"]) == {"p90 TTFT ≤ 1000 ms and p90 TPOT ≤ 50 ms"}
    assert set(t["load"]) == {"poisson"}


def test_gain_against_the_reference_variant_and_without_draws(run_dir, tmp_path):
    t = _report(run_dir, reference="w4a8").capacity().set_index(["variant", "workload"])
    assert set(t["reference"]) == {"w4a8"}
    base = t.loc[("base", "chat")]
    assert base["gain_pct"] == pytest.approx((2 / 3 - 1) * 100)
    assert base["gain_hi"] < 0  # slower than the reference, the whole interval
    assert t.loc[("base", "rag"), "gain_note"].startswith("an upper bound")
    # records only (no raw files): the gain without an interval, and a note saying so
    t2 = cap.capacity_table(rec.load_runs(run_dir), None, None, PRICE).set_index(
        ["variant", "workload"])
    row = t2.loc[("w4a8", "chat")]
    assert row["gain_pct"] == pytest.approx(50.0) and math.isnan(row["gain_lo"])
    assert "no paired bootstrap draws" in row["gain_note"]


def test_capacity_gain_from_draws():
    gain, lo, hi = cap.capacity_gain(2.0, 1.0, [2.0, 3.0, math.nan], [1.0, 1.0, 1.0])
    assert gain == 100.0
    # the NaN draw (below the lowest rate) counts as 0 req/s: -100%
    assert lo == pytest.approx(np.percentile([100.0, 200.0, -100.0], 2.5))
    assert hi == pytest.approx(np.percentile([100.0, 200.0, -100.0], 97.5))
    assert math.isnan(cap.capacity_gain(2.0, math.nan, [1.0], [1.0])[0])
    assert math.isnan(cap.capacity_gain(2.0, 1.0, [1.0, 2.0], [1.0])[1])
    # a reference draw of 0 gives an infinite gain, kept at the top of the interval
    assert cap.capacity_gain(2.0, 1.0, [2.0, 2.0], [1.0, 0.0])[2] == math.inf


def test_rate_points_keep_offered_achieved_and_saturation(run_dir):
    r = _report(run_dir)
    rates = r.rates()
    assert len(rates) == len(VARIANTS) * len(WORKLOADS) * len(RATES)
    top = rates[rates["offered_rate_req_s"] == RATES[-1]]
    assert top["saturated"].all() and (top["failed_requests"] == 3).all()
    assert top["saturated_note"].str.startswith("achieved").all()
    assert not rates.loc[rates["offered_rate_req_s"] < RATES[-1], "saturated"].any()
    one = rates[(rates["variant"] == "base") & (rates["workload"] == "chat")
                & (rates["offered_rate_req_s"] == 2.0)].iloc[0]
    assert one["achieved_rate_req_s"] == pytest.approx(1.98)
    assert one["ttft_p90_ms"] == pytest.approx(800.0)
    assert (one["ttft_p90_lo"], one["ttft_p90_hi"]) == (pytest.approx(720.0),
                                                         pytest.approx(880.0))
    assert one["load_text"] == "Poisson 2 req/s" and one["status"] == "ok"
    assert math.isnan(one["energy_j_per_output_token"])


def test_rate_points_are_not_concurrency_points(run_dir):
    r = _report(run_dir)
    p = r.points()
    # the synchronous and throughput points only; the throughput point keeps its own figures
    assert sorted(set(p["concurrency"])) == [1, CAP]
    thr = p[(p["concurrency"] == CAP) & (p["variant"] == "base") & (p["workload"] == "chat")]
    assert len(thr) == 1 and thr["ttft_ms"].iloc[0] == pytest.approx(400.0)
    assert dict(zip(p["workload"], p["load"], strict=True)) == {"chat": "burst", "rag": "closed"}
    assert (r.workload, r.concurrency) == ("chat", CAP)
    head = r.table().set_index("variant")
    assert head.loc["base", "ttft_ms"] == pytest.approx(400.0)


def test_points_table_labels_every_load_pattern(run_dir):
    text, t = sections.points_table(_report(run_dir))
    assert "(8 at a concurrency, 12 at an offered rate)" in text
    assert list(t.columns[:4]) == ["variant", "mode", "workload", "load"]
    loads = set(t["load"])
    assert {"burst of 1 identical requests", f"burst of {CAP} identical requests",
            "closed loop, 1 in flight", "Poisson 1 req/s", "Poisson 4 req/s"} <= loads
    rate_rows = t[t["load"] == "Poisson 4 req/s"]
    assert rate_rows["marks"].str.contains("SATURATED: achieved").all()
    assert list(rate_rows["achieved req/s"]) == pytest.approx([2.4] * 4)
    assert (rate_rows["failed requests"] == 3).all()
    assert cap.load_text("gamma", 256, 1.5) == "gamma 1.5 req/s"
    assert cap.load_text("batch", 8, math.inf) == "offline batch of 8"


def test_rate_table_shows_offered_against_achieved(run_dir):
    text, t = views.rate_table(_report(run_dir))
    assert text.startswith("12 rate points")
    assert "requests 6..53 of 60 by sending order" in text
    cols = list(t.columns)
    assert cols.index("achieved req/s") == cols.index("offered req/s") + 2
    assert "failed requests" in cols
    assert t.loc[t["offered req/s"] == 4.0, "saturated"].str.startswith("yes: achieved").all()
    assert set(t.loc[t["offered req/s"] < 4.0, "saturated"]) == {"no"}
    # a rate whose trial ended before the server filled says it was not judged
    r = _report(run_dir)
    r.records = rec.combine([r.records, rec.make_records([dict(
        variant="base", scheme="base", stage="latency", mode="server", load="poisson",
        workload="chat", concurrency=CAP, request_rate=1.0, metric="flow_judged", stat="value",
        value=0.0, unit="bool", higher_is_better=True, hardware=HW,
        note="a trial shorter than the server's fill")], run_id="r1")])
    _, t = views.rate_table(r)
    judged = t[(t["variant"] == "base") & (t["traffic mix"] == "chat")].set_index(
        "offered req/s")["saturated"]
    assert judged[1.0] == "not judged (trial shorter than the server's fill)"
    assert judged[2.0] == "no"


def test_rate_curve_figure_has_the_slo_and_saturated_markers(run_dir):
    rates = _report(run_dir).rates()
    fig = plots.plot_rate_curves(rates, metric="ttft_ms", slo_ms=1000.0, percentile=90)
    assert len(fig.axes) == 2  # one panel per workload
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines if line.get_label() != "_nolegend_"]
    assert "SLO: p90 TTFT ≤ 1000 ms" in labels
    slo = next(line for line in ax.lines if line.get_label().startswith("SLO"))
    assert set(slo.get_ydata()) == {1000.0}
    assert {"base p50", "base p90", "w4a8 p50", "w4a8 p90"} <= set(labels)
    assert next(line for line in ax.lines if line.get_label() == "base p90").get_linestyle() \
        == "--"
    # lines join the sustainable points only: the saturated top rate is a red x
    assert list(next(line for line in ax.lines if line.get_label() == "base p50").get_xdata()) \
        == [1.0, 2.0]
    sat = [c for c in ax.collections if c.get_label() == plots.SATURATED_LABEL]
    assert sat and all(tuple(c.get_facecolor()[0][:3]) == (1.0, 0.0, 0.0) for c in sat)
    assert sum(len(c.get_offsets()) for c in sat) == 2 * len(VARIANTS)  # p50 and p90 each
    assert sorted(a.get_text() for a in ax.texts) == [f"{v}: saturated" for v in VARIANTS]
    assert plots.SATURATED_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_rate_curve_cells(run_dir):
    r = _report(run_dir)
    fig = cells.plot_rate_curves(r, metric="tpot_ms")
    assert isinstance(fig, Figure) and fig.name == "tpot_ms-vs-rate"
    assert "SLO: p90 TPOT ≤ 50 ms" in fig.legend and plots.SATURATED_LABEL in fig.legend


def test_answer_opens_with_the_capacity_table(run_dir):
    text = views.answer_markdown(_report(run_dir))
    lines = text.splitlines()
    assert lines[:3] == ["## Answer", "",
                         "| scheme | traffic mix | req/s per GPU at SLO [95% CI] | gain vs "
                         "`base` [95% CI] | $ per M output tokens [95% CI] | J per output "
                         "token |"]
    rows = lines[4:8]
    assert rows[0].startswith("| `base` | chat | 2 [1.8, 2.2] | reference | ")
    g = _report(run_dir).capacity().set_index(["variant", "workload"]).loc[("w4a8", "chat")]
    assert (f"| `w4a8` (W4A8-FP8) | chat | 3 [2.7, 3.3] | +50% [{g['gain_lo']:+.0f}%, "
            f"{g['gain_hi']:+.0f}%] | 6.17 [5.61, 6.86] | not measured on a CPU |") in rows
    # at least the top rate: the gain is a bound, stated at the conservative end of its
    # interval (the point ratio of a censored capacity would claim too much)
    b = [x for x in rows if "| ≥ 2 | ≥ " in x]
    assert len(b) == 1
    lo = float(b[0].split("| ≥ 2 | ≥ ")[1].split("%")[0])
    assert b[0].split("| ≥ 2 | ≥ ")[1].startswith(f"{lo:+.0f}% [{lo:+.0f}%, ") and lo < 33
    assert ("*Capacity at SLO* = the highest sustainable Poisson arrival rate (per GPU) whose "
            "p90 TTFT ≤ 1000 ms and p90 TPOT ≤ 50 ms; from a rate sweep") in text
    assert "saturated rates (the queue grew through the window) are not sustainable" in text
    assert "at $2 per GPU-hour" in text
    # the per-point answer still follows
    assert "**`w4a8` against `base`**" in text
    # without a price in the report: the cost the stage recorded, no price stated
    no_price = views.answer_markdown(_report(run_dir, price=None))
    assert "$ per M output tokens" in no_price.splitlines()[2]
    assert "per GPU-hour" not in no_price


# ---- committed runs without rate sweeps --------------------------------------------------

CLAIM_RUN = Path(__file__).resolve().parents[2] / "outputs/reference/hopper-llama8b-claim/r1"


def test_reference_run_renders_without_capacity():
    if not (CLAIM_RUN / "records.parquet").is_file():
        pytest.skip("reference run not in this checkout")
    run = open_run(CLAIM_RUN)
    r = load_report(run.config(), run)
    assert r.records["load"].isna().all()  # written before schema 1.3
    assert r.capacity().empty and r.rates().empty
    assert list(r.capacity().columns) == cap.CAPACITY_COLUMNS
    text = views.answer_markdown(r)
    assert "Capacity at SLO" not in text and "| scheme |" not in text
    assert text.startswith("## Answer\n\n- ")
    p = r.points()
    assert set(p.loc[p["mode"] == "server", "load"]) == {"burst"}
    assert set(p.loc[p["mode"] == "offline", "load"]) == {"batch"}
    _, t = sections.points_table(r)
    assert t["load"].str.match(r"^(burst of \d+ identical requests|offline batch of \d+)$").all()
    md = cells.plot_rate_curves(r, metric="ttft_ms")
    assert "no rate sweep in this run" in md._repr_markdown_()
    fig = plots.plot_metric_vs_load(p, metric="ttft_ms")
    assert fig.axes[0].get_xlabel().startswith("burst: c identical requests")
    plt.close(fig)


def test_a_sweep_that_could_not_run_says_why(run_dir):
    failed = rec.make_records([dict(
        variant="w8", scheme="w8a8_int8", stage="latency", mode="capacity", load="poisson",
        workload="chat", metric="capacity_req_s", stat="value", value=math.nan, unit="req/s",
        higher_is_better=True, status="failed", note="no valid rate point (3 invalid)")],
        run_id="r1")
    r = _report(run_dir)
    r.records = rec.combine([r.records, failed])
    row = r.capacity().set_index(["variant", "workload"]).loc[("w8", "chat")]
    assert row["status"] == "failed" and math.isnan(row["gain_pct"])
    assert "| `w8` (W8A8-INT8) | chat | failed: no valid rate point (3 invalid) | n/a |" in \
        views.answer_markdown(r)


def test_a_capacity_no_rate_established_says_so(run_dir):
    # a sweep whose every passing rate ran in trials shorter than the server's fill: the
    # capacity is not established, no gain is read from it, and the table says why
    note = ("not established: the lowest rate 1 req/s met the p90 limits in trials shorter "
            "than the server's fill (the achieved rate not judged): that shows no steady state")
    rows = [dict(variant="w8", scheme="w8a8_int8", stage="latency", mode="capacity",
                 load="poisson", workload="chat", metric="capacity_req_s", stat=stat,
                 value=math.nan, unit="req/s", higher_is_better=True, status="invalid",
                 note=note) for stat in ("value", "ci_low", "ci_high")]
    f = run_dir / "raw" / "latency" / "w8" / "capacity_chat.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"value": None, "censored": "unjudged", "draws": [None] * N_DRAWS,
                             "rates": list(RATES), "limits": SLO, "percentile": 90,
                             "note": note}))
    r = _report(run_dir)
    r.records = rec.combine([r.records, rec.make_records(rows, run_id="r1")])
    row = r.capacity().set_index(["variant", "workload"]).loc[("w8", "chat")]
    assert row["censored"] == "unjudged" and row["status"] == "invalid"
    assert math.isnan(row["gain_pct"])
    assert row["gain_note"] == ("no capacity: this variant's not established (no rate judged "
                                "sustained)")
    md = views.answer_markdown(r)
    assert ("| `w8` (W8A8-INT8) | chat | not established: no rate's trial outlasted the "
            "server's fill | n/a |") in md
    assert "not established: every rate that met the SLO ran in trials shorter" in md
    # with no capacity anywhere there is no cost, though the study states a price
    alone = _report(run_dir)
    alone.records = rec.combine([alone.records[alone.records["mode"] != "capacity"],
                                 rec.make_records(rows, run_id="r1")])
    md = views.answer_markdown(alone)
    assert "no cost: no capacity established at $2 per GPU-hour" in md


def test_an_unresolved_capacity_cell_names_each_variant(run_dir):
    # w4a8's chat capacity known only as well as base's (draws over the same range): the
    # verdict card's cell is open and says, per variant, what its gain interval spans
    from evalkit.analysis import decision as dc

    f = run_dir / "raw" / "latency" / "w4a8" / "capacity_chat.json"
    raw = json.loads(f.read_text())
    raw["draws"] = list(np.random.default_rng(5).uniform(1.6, 2.4, N_DRAWS))
    f.write_text(json.dumps(raw))
    cells_, _ = dc.run_cells(_report(run_dir), "traffic/r1", "m")
    chat = next(c for c in cells_ if c.row.endswith("chat"))
    assert chat.tone == "open" and chat.open_kind == "not resolved"
    assert chat.gain.startswith("w4a8: 50 % more req/s per GPU than base [")
