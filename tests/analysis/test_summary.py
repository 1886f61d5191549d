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


def test_a_cut_off_run_decides_through_its_finished_variants(tmp_path):
    """hopper-llama8b-schemes-rag/r1 lost its GPU host while w8a8_int8's server started:
    w4a16 (the reference), w4a8_fp8, fp8_dynamic and bf16 had finished every point and their
    capacity. Their comparisons decide; a variant whose capacity never finished does not,
    and without the reference's nothing does."""
    from evalkit.core.run import open_run
    from evalkit.stages.latency import finished_variants

    name = "hopper-llama8b-schemes-rag/r1"
    shutil.copytree(REFERENCE / name, tmp_path / name)
    run = open_run(tmp_path / name)
    assert finished_variants(run.config(), run) == ["w4a16", "w4a8_fp8", "fp8_dynamic", "bf16"]
    runs = sm.load([tmp_path])
    (s,) = runs
    assert s.report.stage_states["latency"] == "interrupted"
    assert dc.run_exclusion(s.report) == ""
    rows = sm.comparison_rows(runs)
    assert len(rows) and set(rows["excluded"]) == {""}
    assert "w8a8_int8" not in " ".join(rows["comparison"])
    card = dc.build_card([dc.RunEntry(s.report, name, s.shape)], "t")
    (cap,) = [c for c in card.cells if c.row.startswith("capacity")]
    # W4A8-FP8 and FP8-dynamic both pass 21.2 req/s and saturate at 23.5: one is named, the
    # other stated level with it, never ranked below; bf16 (14.1) is not level
    assert cap.variant in ("w4a8_fp8", "fp8_dynamic"), cap
    other = "FP8-dynamic" if cap.variant == "w4a8_fp8" else "W4A8-FP8"
    assert f"level with {other} (21.2 [21.2, 23.4])" in cap.gain, cap.gain
    assert "bf16" not in cap.gain.partition("level with")[2], cap.gain

    # w4a8_fp8's sweep cut off before its capacity: its points leave the answers, the others
    # stay
    units = tmp_path / name / "units/latency"
    next(units.glob("w4a8_fp8_capacity_*")).unlink()
    runs = sm.load([tmp_path])
    (s,) = runs
    assert s.report.latency_finished == ("w4a16", "fp8_dynamic", "bf16")
    rows = sm.comparison_rows(runs)
    cut = rows[rows["comparison"] == "w4a8_fp8 vs w4a16"]
    assert len(cut) and set(cut["excluded"]) == {
        "latency stage interrupted before w4a8_fp8's points all finished"}
    assert set(rows.loc[rows["comparison"] != "w4a8_fp8 vs w4a16", "excluded"]) == {""}
    (line,) = [ln for ln in sm.answer_markdown(runs).splitlines() if "`w4a8_fp8 vs" in ln]
    assert "*not deciding:*" in line and "before w4a8_fp8's points all finished" in line, line
    card = dc.build_card([dc.RunEntry(s.report, name, s.shape)], "t")
    assert all(c.variant != "w4a8_fp8" for c in card.cells)
    assert [c.variant for c in card.cells if c.row.startswith("capacity")] == ["fp8_dynamic"]
    assert "w4a8_fp8 vs w4a16" in set(card.evidence["comparison"]), card.evidence
    assert all(r.why_none for r in card.readings), card.readings  # the claim's pair is cut

    # the reference cut off too: nothing of the run decides
    next(units.glob("w4a16_capacity_*")).unlink()
    (s,) = sm.load([tmp_path])
    rows = sm.comparison_rows([s])
    assert rows["excluded"].str.startswith("latency stage interrupted").all()
    card = dc.build_card([dc.RunEntry(s.report, name, s.shape)], "t")
    assert all(c.variant is None for c in card.cells)


def test_an_interrupted_run_with_one_finished_variant_decides_nothing(tmp_path):
    """The 70B claim run finished W4A16 only (W4A8-FP8 was cut off): no pair to compare."""
    name = "hopper-llama70b-claim/r1"
    shutil.copytree(REFERENCE / name, tmp_path / name)
    (s,) = sm.load([tmp_path])
    assert s.report.latency_finished == ("w4a16",)
    assert dc.run_exclusion(s.report) == "latency stage interrupted"
