"""The report's text and tables (evalkit.ui.views) on a committed reference run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evalkit.analysis.load import load_report
from evalkit.core.run import open_run
from evalkit.metrics import points as pts
from evalkit.ui import sections, views

REF = Path(__file__).resolve().parents[2] / "outputs" / "reference"
CLAIM_RUN = REF / "hopper-llama8b-claim" / "r1"


@pytest.fixture(scope="module")
def report():
    run = open_run(CLAIM_RUN)
    return load_report(run.config(), run)


def test_first_screen_answers_the_comparison_per_regime(report):
    text = views.answer_markdown(report)
    assert text.startswith("## Answer\n")
    assert "**`w4a8_fp8` against `w4a16`**, over 12 valid point(s) (8 server, 4 offline)" in text
    assert "**Which to use, by workload regime** (decided on E2E latency" in text
    # one recommendation per regime that has points, each naming its regime in bold
    regimes = set(report.gains("w4a8_fp8", "w4a16")["regime"])
    for reg in regimes:
        assert f"- **{reg}** — " in text
    # random weights: the answer says quality was not measured, and why
    assert "Quality was not measured in this run (random weights)." in text


def test_header_names_variants_and_hardware(report):
    text = views.header_markdown(report)
    assert text.startswith(f"# {report.study}: quality vs speed of quantized `{report.model}`")
    assert "`w4a8_fp8`" in text and "`w4a16`" in text
    assert f"**Hardware:** {report.hardware}" in text


def test_context_lists_workloads_and_caveats(report):
    text = views.context_markdown(report)
    assert "**Accuracy tasks:** none." in text
    assert "chat (1024→128 tokens)" in text and "summarize (4096→256 tokens)" in text
    caveats = text.split("**Caveats**\n\n", 1)[1]
    assert "- random weights (load_format=dummy): valid for speed, never for quality" in caveats
    # every stage finished: no interrupted/failed-stage caveat
    assert "stage was" not in caveats


def test_regime_table_columns_and_rows(report):
    text, table = views.regime_table(report)
    assert "`w4a8_fp8` against `w4a16`" in text
    assert list(table.columns) == [views.REGIME_LABELS[c] for c in
                                   ["regime", "points", "ttft_gain", "tpot_gain", "e2el_gain",
                                    "throughput_gain", "e2el_faster", "e2el_slower",
                                    "e2el_level", "decision"]]
    assert set(table["regime"]) <= set(pts.REGIMES)
    assert len(table) == table["regime"].nunique() > 0


def test_headline_table_has_no_quality_columns_in_a_speed_study(report):
    cols = list(views.headline_table(report).columns)
    assert cols[:2] == ["variant", "scheme"] and cols[-1] == "latency status"
    assert "TTFT p50 (ms)" in cols and "TTFT vs w4a16" in cols
    assert not any(c.startswith("quality") for c in cols)


def test_points_table_labels_every_point(report):
    text, table = sections.points_table(report)
    assert text.startswith(f"All {len(report.points())} latency points")
    assert list(table.columns)[:4] == ["variant", "mode", "workload", "load"]
    assert "marks" in table.columns and len(table) == len(report.points())


def test_stage_caveat_from_stage_states(tmp_path):
    """A stage recorded as interrupted in the run's stage states becomes a caveat."""
    import shutil

    dst = tmp_path / "r1"
    shutil.copytree(CLAIM_RUN, dst)
    run = open_run(dst)
    run.units.set_stage_state("latency", "interrupted")
    text = views.context_markdown(load_report(run.config(), run))
    assert "The latency stage was interrupted" in text


def test_table_headers_are_readable_and_counts_integers():
    """No snake_case header and no count printed as a float in a rendered table."""
    from evalkit.ui.display import readable, table

    assert readable("ci_low_pct") == "CI low (%)"
    assert readable("ttft_ms p50") == "TTFT p50 (ms)"
    assert readable("tpot_pct_of_roofline") == "TPOT % of roofline"
    assert readable("req_s_per_gpu") == "req/s per GPU"
    html = table(pd.DataFrame({"ci_low_pct": [1.25], "trials": [3.0], "variant": ["a"]})
                 ).to_html()
    assert "CI low (%)" in html and "ci_low_pct" not in html
    assert ">3<" in html.replace(" ", "") and "3.0" not in html and "1.25" in html


def test_card_names_each_runs_quality_once():
    """The card's quality line names a run once before its schemes, whatever parentheses a
    scheme's own label has."""
    import pandas as pd

    from evalkit.analysis.decision import Card
    from evalkit.ui.card import card_html

    card = Card(title="t", claim_text="", claim_source="", readings=[], sentence="", cells=[],
                rows=[], shapes=[], notes=[], evidence=pd.DataFrame(), tolerance_pts=1.0,
                quality=[("W4A16 (study/r1)", "-1.8 pts [-2.5, -1.1]", "loss"),
                         ("bf16 (base) (study/r1)", "+0.0 pts [+0.0, +0.0]", "good"),
                         ("FP8-dynamic (other/r2)", "-0.2 pts [-0.7, +0.4]", "good")])
    page = card_html(card)
    assert page.count("study/r1: ") == 1 and page.count("other/r2: ") == 1
    assert "bf16 (base) +0.0 pts" in page and "W4A16 -1.8 pts" in page
