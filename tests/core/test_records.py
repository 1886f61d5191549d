"""Records: schema, atomic writes, loading several runs, no duplicates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evalkit.core import records as rec


def _rows():
    return [
        {"variant": "base", "scheme": "base", "stage": "accuracy", "task": "arc_easy",
         "metric": "acc", "stat": "value", "value": 0.5, "unit": "fraction",
         "higher_is_better": True, "n": 100},
        {"variant": "base", "scheme": "base", "stage": "latency", "workload": "chat",
         "metric": "ttft_ms", "stat": "p50", "value": 12.0, "unit": "ms",
         "higher_is_better": False, "concurrency": 4, "input_len": 128, "output_len": 32},
    ]


def test_make_records_schema():
    df = rec.make_records(_rows(), run_id="r1", study="s")
    assert list(df.columns) == list(rec.COLUMNS)
    assert (df["schema_version"] == rec.SCHEMA_VERSION).all()
    assert (df["run_id"] == "r1").all()
    assert (df["status"] == "ok").all()
    assert str(df["concurrency"].dtype) == "Int64"
    for col in ("run_id", "variant", "scheme", "stage", "task", "workload", "metric", "stat",
                "value", "unit", "higher_is_better", "concurrency", "input_len", "output_len"):
        assert col in df.columns


@pytest.mark.parametrize("bad,msg", [
    ({"colour": "red"}, "unknown record columns"),
    ({"stage": "deploy"}, "stage must be one of"),
    ({"status": "meh"}, "status must be one of"),
    ({"unit": None}, "need 'unit'"),
])
def test_make_records_rejects(bad, msg):
    row = {**_rows()[0], **bad}
    with pytest.raises(rec.RecordsError, match=msg):
        rec.make_records([row])


def test_write_read_roundtrip_and_atomic(tmp_path):
    df = rec.make_records(_rows(), run_id="r1")
    p = rec.write_records(df, tmp_path / "x" / "records.parquet")
    back = rec.read_records(p)
    pd.testing.assert_frame_equal(back, df)
    assert not list(p.parent.glob(".*.tmp"))


def test_write_failure_keeps_old_file(tmp_path, monkeypatch):
    df = rec.make_records(_rows(), run_id="r1")
    p = rec.write_records(df, tmp_path / "records.parquet")
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(Exception, match="No space left"):
        rec.write_records(rec.make_records(_rows()[:1], run_id="r2"), p)
    assert p.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_runs_several(tmp_path):
    for rid in ("a", "b"):
        d = tmp_path / rid
        d.mkdir()
        rec.write_records(rec.make_records(_rows(), run_id=rid), d / "records.parquet")
    df = rec.load_runs(tmp_path / "a", tmp_path / "b")
    assert sorted(df["run_id"].unique()) == ["a", "b"]
    assert len(df) == 4
    with pytest.raises(rec.RecordsError, match="no records.parquet"):
        rec.load_runs(tmp_path / "missing")


def test_schema_version_checked(tmp_path):
    df = rec.make_records(_rows())
    df["schema_version"] = "0.1"
    df.to_parquet(tmp_path / "old.parquet")
    with pytest.raises(rec.RecordsError, match="schema version"):
        rec.read_records(tmp_path / "old.parquet")


def test_combine_drops_duplicates_keeps_last():
    a = rec.make_records(_rows(), run_id="r")
    b = rec.make_records([{**_rows()[0], "value": 0.7}], run_id="r")
    out = rec.combine([a, b])
    assert len(out) == 2
    assert out.loc[out["stage"] == "accuracy", "value"].item() == 0.7


def test_percentile_rows_nan_not_zero():
    rows = rec.percentile_rows([], metric="ttft_ms", unit="ms", higher_is_better=False)
    assert [r["stat"] for r in rows] == ["mean", "p50", "p90", "p99"]
    assert all(math.isnan(r["value"]) and r["n"] == 0 for r in rows)
    rng = np.random.default_rng(0)
    x = rng.exponential(10, 1000)
    rows = rec.percentile_rows(list(x) + [float("nan")], metric="ttft_ms", unit="ms",
                               higher_is_better=False)
    got = {r["stat"]: r["value"] for r in rows}
    assert got["p50"] == pytest.approx(np.percentile(x, 50))
    assert got["p99"] == pytest.approx(np.percentile(x, 99))
    assert got["mean"] == pytest.approx(x.mean())
    assert rows[0]["n"] == 1000


def test_check_stage_names_failed_units_where_task_is_missing():
    from evalkit.core.errors import StageError
    from evalkit.ui.cells.stage import check_stage

    df = rec.make_records(
        [dict(variant="w4a16", scheme="w4a16", stage="latency", metric="tpot_ms", stat="mean",
              value=float("nan"), unit="ms", higher_is_better=False, status="failed",
              workload="chat", note="checkpoint gone")], run_id="r1")
    with pytest.raises(StageError, match="1 unit\\(s\\) failed.*w4a16 chat: checkpoint gone"):
        check_stage(df)
    check_stage(df.assign(status="ok"))  # nothing failed: no error
