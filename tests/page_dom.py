"""Rendered pages read from headless Chromium: the DOM, element positions, screenshots, and
the checks every decision page must pass (the verdict card on the first screen naming the
claim in both readings, cells decided by deciding points only, figures whose legend entries
have data, one colour per scheme, a real title). Used by test_report_html.py (committed
pages) and test_smoke.py (a fresh CPU report)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

FIRST_SCREEN_PX = 900
WIDTH_PX = 1280

#: appended to a copy of the page: writes the card's and its parts' positions on <body>
_MEASURE = """<script>
(function () {
  var b = document.body, c = document.getElementById('verdict');
  if (!c) { b.setAttribute('data-card-top', '-1'); return; }
  var r = c.getBoundingClientRect(), y = window.scrollY;
  b.setAttribute('data-card-top', String(r.top + y));
  b.setAttribute('data-card-bottom', String(r.bottom + y));
  var m = 0;
  c.querySelectorAll('.claim, table.matrix').forEach(function (e) {
    m = Math.max(m, e.getBoundingClientRect().bottom + y); });
  b.setAttribute('data-card-parts-bottom', String(m));
})();
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--hide-scrollbars"]


def screenshot(html: Path, out: Path, height: int) -> np.ndarray:
    from PIL import Image

    subprocess.run([chromium(), *_flags(out.parent / "profile"),
                    f"--window-size={WIDTH_PX},{height}", f"--screenshot={out}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB"))


def dom(page: Path, tmp: Path, *, measure: bool = False):
    """The page's DOM as headless Chromium built it (``--dump-dom``), parsed; with
    ``measure``, a copy of the page beside it records the card's position on ``<body>``
    (``data-card-top``, ``data-card-bottom``, ``data-card-parts-bottom``, px from the top
    at a 1280 x 900 window)."""
    from bs4 import BeautifulSoup

    if measure:
        copy = page.with_name(f".measure-{page.name}")
        text = page.read_text(encoding="utf-8")
        copy.write_text(text.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        page = copy
    try:
        out = subprocess.run(
            [chromium(), *_flags(tmp / "profile-dom"), f"--window-size={WIDTH_PX},"
             f"{FIRST_SCREEN_PX}", "--dump-dom", page.as_uri()],
            check=True, capture_output=True, timeout=120, text=True)
    finally:
        if measure:
            page.unlink()
    return BeautifulSoup(out.stdout, "html.parser")


def claims_of(configs: list[Path]) -> list[dict]:
    """The claims the runs' resolved study files state."""
    out = []
    for c in configs:
        for cl in (yaml.safe_load(c.read_text(encoding="utf-8")) or {}).get("claims") or []:
            if cl not in out:
                out.append(cl)
    return out


def check_card(page: Path, tmp: Path, claims: list[dict]):
    """The verdict card is on the first screen and names the claim in both readings (or,
    for runs whose studies state none, says so); the title is the page's own. Returns the
    measured DOM."""
    d = dom(page, tmp, measure=True)
    title = d.find("title").get_text(strip=True)
    assert title and title != "Notebook", title
    body = d.find("body")
    top, bottom = float(body["data-card-top"]), float(body["data-card-bottom"])
    assert 0 <= top < FIRST_SCREEN_PX, f"verdict card starts at {top} px"
    assert float(body["data-card-parts-bottom"]) <= FIRST_SCREEN_PX, body.attrs
    assert bottom <= FIRST_SCREEN_PX, f"verdict card ends at {bottom} px"
    card = d.find(id="verdict")
    text = card.get_text(" ")
    if not claims:
        assert "No speed claim is stated in these studies." in text, text
        return d
    c = claims[0]
    assert c["text"] in text
    for key in ("ttft_reduction_pct", "tpot_reduction_pct"):
        if c.get(key) is None:
            continue
        pct = float(c[key])
        assert f"latency −{pct:.0f} %" in text, (key, text)  # reading 1: latency -X %
        assert f"speed ×{1 + pct / 100:.2f}" in text, (key, text)  # reading 2: speed x(1+X)
    return d


def check_cells_decided_by_deciding_points(d, runs: dict[str, Path]) -> int:
    """Every cell that names a scheme rests on at least one point of that run and regime
    that is valid and pooled over several trials, from a run whose GPU engine was compiled
    and whose latency stage finished, or, cut off, had finished every point of the cell's
    scheme and of the reference (read from the run's own records, status and unit markers)."""
    from evalkit.metrics import points as pts

    n = 0
    for td in d.select("#verdict td.cell"):
        variant = td.get("data-variant")
        if not variant:
            continue
        run = runs[td["data-run"]]
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        eng = cfg.get("engine", {})
        assert not (eng.get("device") == "cuda" and eng.get("enforce_eager")), td["data-run"]
        status = (json.loads((run / "status.json").read_text(encoding="utf-8"))
                  if (run / "status.json").is_file() else {})
        lat = status.get("stages", {}).get("latency", {})
        assert lat.get("state") != "running", td["data-run"]
        if lat.get("state") in ("interrupted", "failed"):
            done = _finished(run)
            assert variant in done, (td["data-run"], variant, done)
            assert cfg["report"]["reference_variant"] in done, (td["data-run"], done)
        row = td.find_parent("tr").find("th").get_text(strip=True)
        if row.startswith("capacity"):
            n += 1
            continue
        p = pts.latency_points(pd.read_parquet(run / "records.parquet"))
        p = p[(p["regime"] == row) & (p["status"] == "ok") & (p["trials"] > 1)]
        assert len(p), (td["data-run"], row, "no deciding point")
        n += 1
    return n


def _finished(run: Path) -> set[str]:
    """Variants of a cut-off run with a finished unit for every latency point file and every
    capacity they planned: read from the unit markers, not from the page's own rule."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    markers = [p.name for p in (run / "units" / "latency").glob("*.json")]
    swept = [w["name"] for w in cfg["latency"]["workloads"]
             if w["name"] in (cfg["latency"].get("traffic") or {}).get("workloads", [])]
    out = set()
    for v in (x["name"] for x in cfg["variants"]):
        mine = [m for m in markers if m.startswith(f"{v}_server_") or m.startswith(f"{v}_capacity_")]
        if all(any(m.startswith(f"{v}_capacity_{w}_") for m in mine) for w in swept) and mine:
            out.add(v)
    return out


def check_figures(d, schemes: dict[str, str]) -> dict[str, str]:
    """Every figure: its legend entries drawn as text and each with data; each variant
    (legend label) has one colour across figures, and variants of one scheme share it.
    Returns {variant: colour}."""
    seen: dict[str, str] = {}
    for f in d.select("figure.evalkit-figure"):
        svg = f.find("svg")
        assert svg is not None, f["data-figure"]
        drawn = {t.get_text() for t in svg.find_all("text")}
        for entry in [x for x in f["data-legend"].split("|") if x]:
            assert entry in drawn, f"{f['data-figure']}: legend entry {entry!r} not drawn"
        assert f.get("data-nodata", "") == "", (f["data-figure"], f["data-nodata"])
        for pair in [x for x in f.get("data-colors", "").split("|") if x]:
            label, _, color = pair.rpartition("=")
            if label in schemes and color:
                assert seen.setdefault(label, color) == color, (f["data-figure"], label,
                                                                 color, seen[label])
    by_scheme: dict[str, set[str]] = {}
    for v, c in seen.items():
        by_scheme.setdefault(schemes[v], set()).add(c)
    assert all(len(c) == 1 for c in by_scheme.values()), by_scheme
    colors = [next(iter(c)) for c in by_scheme.values()]
    assert len(set(colors)) == len(colors), by_scheme  # two schemes never share a colour
    return seen
