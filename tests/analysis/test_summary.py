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


def test_repeated_measurements_pair_equal_setups_only(tmp_path):
    """W4A16 under the RAG mix was measured in two H100 sittings with one setup (the same
    prompts, engine, trials and SLO; only the rate plans differ, which decide where a sweep
    measures, not what): the page pairs them, earlier run first, for capacity and the
    closed-loop points, with the change's interval from both runs' own data. The traffic
    run measured W4A16 under a RAG mix too, with another engine (more KV cache) and trials:
    never paired. A setting that changes what is measured breaks the pair."""
    import yaml

    for name in ("hopper-llama8b-schemes-rag/r1", "hopper-llama8b-schemes-rag-int8/r1",
                 "hopper-llama8b-traffic/r1"):
        shutil.copytree(REFERENCE / name, tmp_path / name)
    runs = sm.load([tmp_path])
    t = sm.repeats(runs, resamples=200)
    assert set(t["variant"]) == {"w4a16"}
    assert set(t["run_a"]) == {"hopper-llama8b-schemes-rag/r1"}
    assert set(t["run_b"]) == {"hopper-llama8b-schemes-rag-int8/r1"}
    cap = t[t["metric"] == "capacity_req_s_per_gpu"]
    assert len(cap) == 1 and cap["concurrency"].isna().all()
    recs = {s.label: s.report.records for s in runs}
    for run, col in (("hopper-llama8b-schemes-rag/r1", "value_a"),
                     ("hopper-llama8b-schemes-rag-int8/r1", "value_b")):
        r = recs[run]
        want = r[(r["variant"] == "w4a16") & (r["metric"] == "capacity_req_s_per_gpu")
                 & (r["stat"] == "value")]["value"]
        assert float(cap[col].iloc[0]) == float(want.iloc[0])
    row = cap.iloc[0]
    assert row["ci_low_pct"] <= row["change_pct"] <= row["ci_high_pct"]
    assert row["beyond"] == (row["ci_low_pct"] > 0 or row["ci_high_pct"] < 0)
    closed = t[t["concurrency"].notna()]
    assert sorted(set(closed["concurrency"])) == [1, 16, 64]
    assert set(closed["metric"]) == {"ttft_ms", "tpot_ms"}

    cfg = tmp_path / "hopper-llama8b-schemes-rag-int8/r1/config.yaml"
    d = yaml.safe_load(cfg.read_text())
    d["engine"]["kv_cache_memory_gib"] = 24
    cfg.write_text(yaml.safe_dump(d))
    assert sm.repeats(sm.load([tmp_path]), resamples=50).empty


def test_a_capacity_cell_carries_a_re_measurement_beyond_its_interval(tmp_path):
    """The RAG capacity cell comes from hopper-llama8b-schemes-rag/r1 (W4A16 at 11.7 req/s
    per GPU); the later sitting measured W4A16 at 14.1 with the same setup, beyond the
    interval of the change. The cell keeps its run's figures and says so in a note, with the
    change from its own run's figure; a cell whose run is the later one reads the change the
    other way. Without repeats, no note."""
    for name in ("hopper-llama8b-schemes-rag/r1", "hopper-llama8b-schemes-rag-int8/r1"):
        shutil.copytree(REFERENCE / name, tmp_path / name)
    runs = sm.load([tmp_path])
    t = sm.repeats(runs, resamples=200)
    cap = t[t["metric"] == "capacity_req_s_per_gpu"].iloc[0]
    assert cap["beyond"]
    page = tmp_path / "page.html"
    card = sm.verdict_card(runs, page, "t", t)
    (cell,) = [c for c in card.cells if c.row == "capacity at the SLO · rag"]
    assert cell.run == "hopper-llama8b-schemes-rag/r1" and cell.scheme == "w4a8_fp8"
    (note,) = cell.notes
    assert note == (f"w4a16 re-measured: {cap['value_b']:.3g} req/s "
                    f"({cap['change_pct']:+.0f} % [{cap['ci_low_pct']:+.0f}, "
                    f"{cap['ci_high_pct']:+.0f} %])")
    # the same pair listed the other way round (the cell's run as the later one, B - A and
    # its interval in % of the other run): the note, from the cell's own figure, is the same
    va, vb = cap["value_a"], cap["value_b"]
    flipped = t.copy()
    flipped[["run_a", "run_b"]] = flipped[["run_b", "run_a"]].to_numpy()
    flipped[["value_a", "value_b"]] = flipped[["value_b", "value_a"]].to_numpy()
    flipped["change_pct"] = (va / vb - 1) * 100
    flipped["ci_low_pct"] = -t["ci_high_pct"] * va / vb
    flipped["ci_high_pct"] = -t["ci_low_pct"] * va / vb
    card = sm.verdict_card(runs, page, "t", flipped)
    (cell,) = [c for c in card.cells if c.row == "capacity at the SLO · rag"]
    assert cell.notes == [note]
    assert not sm.verdict_card(runs, page, "t").cell("capacity at the SLO · rag",
                                                      cell.shape).notes
