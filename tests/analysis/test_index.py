"""OUTPUT_ROOT/index.html over a copy of committed reference runs."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

from evalkit.analysis.index import write_index
from evalkit.analysis.load import load_report
from evalkit.analysis.summary import one_line
from evalkit.core.run import open_run

REF = Path(__file__).resolve().parents[2] / "outputs" / "reference"
RUNS = ("hopper-llama8b-claim/r1", "hopper-moe-claim/r1")


def _rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", body, flags=re.S)


def test_index_one_row_per_run_with_relative_link_and_verdict(tmp_path):
    root = tmp_path / "outputs"
    for r in RUNS:
        shutil.copytree(REF / r, root / r)
    page_path = write_index(root)
    assert page_path == root.resolve() / "index.html"
    page = page_path.read_text(encoding="utf-8")
    rows = _rows(page)
    assert len(rows) == len(RUNS)
    assert f"{len(RUNS)} run(s) under outputs/" in page
    assert str(tmp_path) not in page  # movable: no absolute path
    for r in RUNS:
        row = next(x for x in rows if f"<td>{r.split('/')[0]}</td>" in x)
        link = re.search(r'<a href="([^"]+)">', row).group(1)
        assert not link.startswith("/") and (root / html.unescape(link)).is_file()
        assert link.startswith(r + "/")
        run = open_run(root / r)
        verdict = one_line(load_report(run.config(), run))
        assert f"<td>{html.escape(verdict)}</td>" in row
        assert "<td>done</td>" in row


def test_index_state_comes_from_stage_states(tmp_path):
    root = tmp_path / "outputs"
    shutil.copytree(REF / RUNS[0], root / RUNS[0])
    open_run(root / RUNS[0]).units.set_stage_state("latency", "failed")
    rows = _rows(write_index(root).read_text(encoding="utf-8"))
    assert len(rows) == 1 and "<td>failed</td>" in rows[0]


def test_index_marks_superseded_runs_and_links_the_answer_page(tmp_path):
    """supersedes.yaml marks the replaced run with its successor; the answer page beside
    the root is linked; a manifest naming a run that is not there is one clear error."""
    import pytest

    from evalkit.analysis.lineage import superseded_by
    from evalkit.core.errors import ConfigError

    root = tmp_path / "outputs"
    for r in RUNS:
        shutil.copytree(REF / r, root / r)
    (root / "summary.html").write_text("<html></html>", encoding="utf-8")
    (root / "supersedes.yaml").write_text(
        f"- run: {RUNS[1]}\n  supersedes: [{RUNS[0]}]\n  why: a newer grid\n",
        encoding="utf-8")
    page = write_index(root).read_text(encoding="utf-8")
    rows = _rows(page)
    old = next(x for x in rows if f"<td>{RUNS[0].split('/')[0]}</td>" in x)
    new = next(x for x in rows if f"<td>{RUNS[1].split('/')[0]}</td>" in x)
    assert f"superseded by {RUNS[1]} (a newer grid)" in old and "superseded" not in new
    assert '<a href="summary.html">The answer across these runs</a>' in page
    assert "1 superseded" in page
    assert superseded_by(root / RUNS[0]) == (RUNS[1], "a newer grid")
    assert superseded_by(root / RUNS[1]) is None
    (root / "supersedes.yaml").write_text(
        "- run: nothing/r9\n  supersedes: [x/y]\n  why: w\n  extra: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        write_index(root)
    msg = str(err.value)
    assert "supersedes.yaml: entry 0: extra" in msg and "allowed keys: run" in msg
    (root / "supersedes.yaml").write_text(
        f"- run: nothing/r9\n  supersedes: [{RUNS[0]}]\n  why: w\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no run 'nothing/r9'"):
        write_index(root)
