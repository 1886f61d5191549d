"""The rendered stakeholder report and the summary page, read from headless Chromium's DOM.

Uses the committed reference report (real Hopper measurements), so it runs without an
engine. Needs Debian's chromium (installed by .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# the re-measured claim run: every point valid, so every figure has data
REPORT = REPO / "outputs" / "reference" / "hopper-llama8b-claim" / "r1" / "html" / "04_report.html"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def _screenshot(html: Path, out: Path, height: int) -> np.ndarray:
    from PIL import Image

    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={out.parent / 'profile'}", "--hide-scrollbars",
         f"--window-size=1280,{height}", f"--screenshot={out}", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    return np.asarray(Image.open(out).convert("RGB"))


def _dom(page: Path, tmp: Path):
    """The page's DOM as headless Chromium built it (``--dump-dom``), parsed."""
    from bs4 import BeautifulSoup

    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile-dom'}", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, timeout=120, text=True)
    return BeautifulSoup(out.stdout, "html.parser")


def _heading(dom, prefix: str):
    """The first h2 whose text (without nbconvert's anchor mark) starts with ``prefix``."""
    for h in dom.find_all("h2"):
        if h.get_text(strip=True).lstrip("¶").startswith(prefix):
            return h
    raise AssertionError(f"no heading {prefix!r}")


def _check_figures(dom, expect_in_legends: set[str]) -> list:
    """Every figure has an SVG whose text holds each legend entry the figure names; returns
    the figures."""
    figs = dom.select("figure.evalkit-figure")
    assert figs, "no figures in the page"
    for f in figs:
        svg = f.find("svg")
        assert svg is not None, f["data-figure"]
        drawn = {t.get_text() for t in svg.find_all("text")}
        legend = [x for x in f["data-legend"].split("|") if x]
        for entry in legend:
            assert entry in drawn, f"{f['data-figure']}: legend entry {entry!r} not drawn"
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
    assert heads[0].startswith("hopper-llama8b-claim") and heads[1].startswith("Answer"), heads
    answer = _heading(dom, "Answer").find_next("ul")
    first = answer.find("li").get_text(" ")
    assert "w4a8_fp8" in first and "w4a16" in first and "valid point" in first, first
    assert "TTFT lower at all 12 points" in first, first  # every TTFT point is faster here
    for regime in ("batch-1 decode", "high-concurrency serving", "offline throughput"):
        assert regime in text, regime
    figs = _check_figures(dom, variants)
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
    from evalkit.ui.cli import main

    runs = [REPO / "outputs" / "reference" / "hopper-llama8b-claim" / "r1",
            REPO / "outputs" / "reference" / "hopper-gemma" / "r1"]
    out = tmp_path / "page" / "summary.html"
    out.parent.mkdir()
    assert main(["summary", *map(str, runs), "-o", str(out), "--no-progress"]) == 0
    dom = _dom(out, tmp_path)
    assert "Answer by workload regime" in dom.get_text(" ")
    assert "gemma3-270m" in dom.get_text(" ")  # the real-weights run gives the quality part
    _check_figures(dom, set())
    assert main(["summary", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.html")]) != 0
    assert not (tmp_path / "x.html").exists()
