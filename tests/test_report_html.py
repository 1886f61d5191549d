"""The rendered stakeholder report opens in headless Chromium and its figures render.

Uses the committed reference report (real Hopper measurements), so it runs without an
engine. Needs Debian's chromium (installed by .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
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


def test_reference_report_renders_with_figures(tmp_path):
    text = REPORT.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 4, "report should embed its figures"
    for words in ("Headline", "Claim check", "Invalid points", "Client vs server", "Environment",
                  "random weights", "passed its validity checks"):
        assert words in text, words
    assert "open_stage" not in text, "stakeholder report must hide code"
    img = _screenshot(REPORT, tmp_path / "report.png", height=9000)
    assert img.shape[0] >= 9000 and img.shape[1] >= 1280
    # figures are large non-white areas: count rows with many coloured (non-grey) pixels
    rgb = img.astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 2]) > 40) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 40)
    rows_with_plot = (coloured.sum(axis=1) > 20).sum()
    # two gain charts (one bar each in a two-variant study) and the latency curves
    assert rows_with_plot > 100, f"only {rows_with_plot} rows with coloured pixels"
    assert (rgb.sum(axis=2) < 600).mean() > 0.005, "page looks blank"
