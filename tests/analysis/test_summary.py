"""The answer page's text (evalkit.analysis.summary) on committed reference runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from evalkit.analysis import decision as dc
from evalkit.analysis import summary as sm

REFERENCE = Path(__file__).resolve().parents[2] / "outputs/reference"


def test_answers_keep_a_run_that_decides_nothing_apart(tmp_path):
    """The eager one-GPU cluster check (single trial) and the compiled MoE batches run (three
    trials): the answers recommend from the compiled run only; the eager run's points are
    listed as not deciding, with the reason the verdict card gives, never as a
    recommendation or as single-trial evidence."""
    for name in ("hopper-cluster-check/ray", "hopper-moe-batches/r1"):
        shutil.copytree(REFERENCE / name, tmp_path / name)
    runs = sm.load([tmp_path])
    eager = next(s for s in runs if s.label == "hopper-cluster-check/ray")
    reason = dc.run_exclusion(eager.report)
    assert reason.startswith("eager GPU engine")
    rows = sm.comparison_rows(runs)
    assert set(rows.loc[rows["run"] == "hopper-cluster-check/ray", "excluded"]) == {reason}
    assert set(rows.loc[rows["run"] == "hopper-moe-batches/r1", "excluded"]) == {""}
    text = sm.answer_markdown(runs)
    lines = [ln for ln in text.splitlines() if "hopper-cluster-check/ray" in ln]
    assert lines, text
    for ln in lines:
        head, _, aside = ln.partition("*not deciding:*")
        assert "hopper-cluster-check/ray" not in head, ln
        assert "hopper-cluster-check/ray" in aside and reason in aside, ln
        assert "single-trial points" not in ln, ln
    # the compiled run recommends (batch-1 decode: W4A16 on the MoE shape)
    assert "qwen3-30b-a3b → **w4a16**" in text, text
