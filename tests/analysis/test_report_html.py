"""The rendered stakeholder report and the summary page, read from headless Chromium's DOM.

Uses the committed reference report (real Hopper measurements), so it runs without an
engine. Needs Debian's chromium (installed by .ci/run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import page_dom
import pytest

REPO = Path(__file__).resolve().parents[2]
# the re-measured claim run: every point valid, so every figure has data
REPORT = REPO / "outputs" / "reference" / "hopper-llama8b-claim" / "r1" / "html" / "04_report.html"


def _screenshot(html: Path, out: Path, height: int) -> np.ndarray:
    return page_dom.screenshot(html, out, height)


def _dom(page: Path, tmp: Path):
    return page_dom.dom(page, tmp)


def _heading(dom, prefix: str):
    """The first h2 whose text (without nbconvert's anchor mark) starts with ``prefix``."""
    for h in dom.find_all("h2"):
        if h.get_text(strip=True).lstrip("¶").startswith(prefix):
            return h
    raise AssertionError(f"no heading {prefix!r}")


def _schemes(*runs: Path) -> dict[str, str]:
    import pandas as pd

    out = {}
    for r in runs:
        df = pd.read_parquet(r / "records.parquet", columns=["variant", "scheme"])
        out.update(zip(df["variant"], df["scheme"], strict=True))
    return out


def _check_figures(dom, expect_in_legends: set[str]) -> list:
    """Every figure's legend entries are drawn and have data, one colour per scheme; the
    load figures name every variant. Returns the figures."""
    figs = dom.select("figure.evalkit-figure")
    assert figs, "no figures in the page"
    for f in figs:
        legend = [x for x in f["data-legend"].split("|") if x]
        if f["data-figure"].startswith(("ttft_ms-vs-load", "tpot_ms-vs-load", "goodput")):
            assert expect_in_legends <= set(legend), (f["data-figure"], legend)
    return figs


def test_reference_report_dom_answers_first(tmp_path):
    import pandas as pd

    run = REPORT.parent.parent
    variants = set(pd.read_parquet(run / "records.parquet")["variant"])
    dom = _dom(REPORT, tmp_path)
    text = dom.get_text(" ")
    # the first heading after the title is the answer, with a verdict over all points
    heads = [h.get_text(strip=True) for h in dom.find_all(["h1", "h2"])]
    assert heads[0].startswith("hopper-llama8b-claim") and heads[1].startswith("Verdict"), heads
    assert heads[2].startswith("Answer"), heads
    answer = _heading(dom, "Answer").find_next("ul")
    first = answer.find("li").get_text(" ")
    assert "w4a8_fp8" in first and "w4a16" in first and "valid point" in first, first
    assert "TTFT lower at all 12 points" in first, first  # every TTFT point is faster here
    for regime in ("batch-1 decode", "high-concurrency serving", "offline throughput"):
        assert regime in text, regime
    figs = _check_figures(dom, variants)
    page_dom.check_figures(dom, _schemes(run))
    names = {f["data-figure"] for f in figs}
    for want in ("ttft_ms-vs-load-server", "tpot_ms-vs-load-server", "ttft_ms-vs-load-offline",
                 "throughput-vs-latency", "goodput"):
        assert want in names, (want, names)
    # the headline table: no NaN cell, and no n/a where the point was measured
    table = _heading(dom, "One point").find_next("table")
    cells = [td.get_text(strip=True) for td in table.select("tbody td")]
    assert cells and not any(c.lower() in ("nan", "n/a", "") for c in cells), cells
    # long tables are folded at the end
    folded = [d.find("summary").get_text(" ", strip=True) for d in dom.select("details")]
    assert any("Client vs server" in f for f in folded) and any("All latency points" in f
                                                                for f in folded), folded
    assert "open_stage" not in text, "stakeholder report must hide code"
    img = _screenshot(REPORT, tmp_path / "report.png", height=6000)
    assert img.shape[0] >= 6000 and img.shape[1] >= 1280
    rgb = img.astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 2]) > 40) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 40)
    rows_with_plot = (coloured.sum(axis=1) > 20).sum()
    assert rows_with_plot > 300, f"only {rows_with_plot} rows with coloured pixels"


SUMMARY = REPO / "docs" / "results.html"


def test_committed_summary_page_answers_per_regime(tmp_path):
    dom = _dom(SUMMARY, tmp_path)
    text = dom.get_text(" ")
    assert _heading(dom, "Answer by workload regime")
    for regime in ("batch-1 decode", "high-concurrency serving", "long-prompt prefill",
                   "offline throughput"):
        assert f"{regime}" in text, regime
    assert "w4a8_fp8 vs w4a16" in text
    _check_figures(dom, set())
    # every run's report link resolves, relative to the page
    links = [a["href"] for a in dom.select("table.evalkit-runs a")]
    assert links, "no run links"
    for href in links:
        assert not href.startswith(("/", "file:")), href
        assert (SUMMARY.parent / href).resolve().is_file(), href
    img = _screenshot(SUMMARY, tmp_path / "summary.png", height=3000)
    assert (img.astype(int).sum(axis=2) < 600).mean() > 0.005, "page looks blank"


@pytest.mark.slow
def test_summary_command_renders_a_page(tmp_path):
    """`evalkit summary` over two reference runs writes a page whose DOM has the answer and
    a figure; a path that is no run fails with one clear error and writes nothing."""
    from retired_runs import retired_run

    from evalkit.ui.cli import main

    runs = [REPO / "outputs" / "reference" / "hopper-llama8b-claim" / "r1",
            retired_run("hopper-gemma/r1", tmp_path / "git")]
    out = tmp_path / "page" / "summary.html"
    out.parent.mkdir()
    assert main(["summary", *map(str, runs), "-o", str(out), "--no-progress"]) == 0
    dom = _dom(out, tmp_path)
    assert "Answer by workload regime" in dom.get_text(" ")
    assert "gemma3-270m" in dom.get_text(" ")  # the real-weights run gives the quality part
    _check_figures(dom, set())
    assert main(["summary", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.html")]) != 0
    assert not (tmp_path / "x.html").exists()


# ---- the decision pages: the verdict card first, from deciding points only -----------------

REF = REPO / "outputs" / "reference"
REF_RUNS = sorted(p.parent for p in REF.glob("*/*/config.yaml"))


def test_reference_runs_hold_no_invalid_point():
    """outputs/reference/ keeps no run with an invalid point (retired runs: docs/results.md)."""
    import pandas as pd

    from evalkit.metrics import points as pts

    assert REF_RUNS
    for run in REF_RUNS:
        p = pts.latency_points(pd.read_parquet(run / "records.parquet"))
        assert not (p["status"] == "invalid").any(), run


def test_summary_page_verdict_card_first(tmp_path):
    """docs/results.html: the card on the first 900 px names the claim in both readings; each
    cell naming a scheme rests on deciding points; figures' legends have data and one colour
    per scheme; a real title; the card's PNG/SVG export beside the page carries the claim."""
    claims = page_dom.claims_of([r / "config.yaml" for r in REF_RUNS])
    d = page_dom.check_card(SUMMARY, tmp_path, claims)
    labels = {f"{r.parent.name}/{r.name}": r for r in REF_RUNS}
    assert page_dom.check_cells_decided_by_deciding_points(d, labels) >= 3
    page_dom.check_figures(d, _schemes(*REF_RUNS))
    # superseded runs (supersedes.yaml) never answer a cell
    from evalkit.analysis.lineage import superseded_runs

    old = superseded_runs(REF)
    assert not [td for td in d.select("#verdict td.cell") if td.get("data-run") in old]
    svg = SUMMARY.with_name(f"{SUMMARY.stem}.verdict.svg").read_text(encoding="utf-8")
    pct = float(claims[0]["ttft_reduction_pct"])
    assert f"latency −{pct:.0f} %" in svg and f"speed ×{1 + pct / 100:.2f}" in svg
    assert SUMMARY.with_name(f"{SUMMARY.stem}.verdict.png").stat().st_size > 10_000
    img = page_dom.screenshot(SUMMARY, tmp_path / "first.png", height=900)
    assert (img.astype(int).sum(axis=2) < 600).mean() > 0.005, "first screen looks blank"


@pytest.mark.parametrize("run", REF_RUNS, ids=lambda r: f"{r.parent.name}/{r.name}")
def test_reference_report_verdict_card_first(run, tmp_path):
    """Each committed GPU report opens with its verdict card (first 900 px, both readings of
    its claim), cells on deciding points only, figures with data and one colour per scheme,
    and its card exported as html/verdict.png and .svg."""
    page = run / "html" / "04_report.html"
    d = page_dom.check_card(page, tmp_path, page_dom.claims_of([run / "config.yaml"]))
    page_dom.check_cells_decided_by_deciding_points(d, {f"{run.parent.name}/{run.name}": run})
    page_dom.check_figures(d, _schemes(run))
    assert (run / "html" / "verdict.png").stat().st_size > 10_000
    assert "<svg" in (run / "html" / "verdict.svg").read_text(encoding="utf-8")[:2000]
