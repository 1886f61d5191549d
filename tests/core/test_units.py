"""The unit store and the stage contract: one key encoder that matches the committed runs'
marker files, markers written atomically, failures raised only when asked."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from evalkit.core.errors import StageError
from evalkit.core.records import empty_records
from evalkit.core.units import Failure, StageResult, UnitKey, UnitStore

REF = Path(__file__).resolve().parents[2] / "outputs" / "reference"


def test_keys_encode_as_the_marker_files_of_committed_runs():
    assert UnitKey.latency("w4a16", "server", "chat", 16, math.inf).encode() == \
        "w4a16/server/chat/c16/rinf"
    assert UnitKey.latency("w4a16", "server", "chat", 1, 2.5).encode() == "w4a16/server/chat/c1/r2.5"
    assert UnitKey.accuracy("base", "arc_easy").encode() == "base/arc_easy"
    assert UnitKey.quantize("w8a8").encode() == "w8a8"
    # every latency point of a committed run is found by its typed key, and its records are
    # where the marker says (so committed runs resume and rebuild under this code)
    for run in (REF / "hopper-llama8b-claim" / "r1", REF / "hopper-moe-claim" / "r1"):
        store = UnitStore(run)
        points = pd.read_parquet(run / "records" / "latency.parquet")
        points = points[points["mode"].isin(["server", "offline"]) & points["workload"].notna()]
        keys = {UnitKey.latency(r.variant, r.mode, r.workload, int(r.concurrency), r.request_rate)
                for r in points.drop_duplicates(["variant", "mode", "workload", "concurrency",
                                                 "request_rate"]).itertuples()}
        markers = list((run / "units" / "latency").glob("*.json"))
        assert len(keys) == len(markers) >= 10
        for k in keys:
            info = store.done(k)
            assert info is not None, k
            assert run / info["records"] == store.unit_records_path(k), k


def test_store_marks_and_counts(tmp_path):
    store = UnitStore(tmp_path)
    k = UnitKey.accuracy("base", "arc_easy")
    assert store.done(k) is None
    store.mark(k, {"seconds": 1.5})
    assert store.done(k) == {"seconds": 1.5}
    store.set_engine_verdict("w4a8", "unsupported", "no kernel", "latency")
    assert store.engine_verdict("w4a8")["reason"] == "no kernel"
    assert store.counts() == {"accuracy": 1}  # verdicts are not units
    store.set_stage_state("latency", "interrupted", seconds=3)
    store.set_stage_state("report", "done")
    st = store.stage_states()
    assert st["latency"]["state"] == "interrupted" and st["latency"]["seconds"] == 3
    assert st["report"]["state"] == "done"
    assert not list(tmp_path.rglob("*.tmp*"))


def test_stage_result_raises_only_when_asked():
    ok = StageResult("latency", empty_records())
    ok.raise_for_failures(unsupported_is_error=True)
    unsup = Failure(UnitKey.latency("w4a8", "server", "chat", 1, math.inf), "unsupported",
                    "no kernel on this CPU")
    res = StageResult("latency", pd.DataFrame(), [unsup])
    res.raise_for_failures()  # unsupported is data unless the study says otherwise
    with pytest.raises(StageError, match="unsupported: w4a8/server/chat/c1/rinf: no kernel"):
        res.raise_for_failures(unsupported_is_error=True)
    failed = Failure(UnitKey.accuracy("fp8", "arc_easy"), "failed", "server died")
    res = StageResult("accuracy", pd.DataFrame(), [failed, unsup])
    assert res.failed == [failed] and res.unsupported == [unsup]
    with pytest.raises(StageError, match=r"accuracy stage: 1 unit\(s\).*fp8/arc_easy: server died"):
        res.raise_for_failures()


def test_stop_request_refuses_marks_only_in_the_runner_kernels(tmp_path):
    # The runner writes the request; its kernels (its child processes) then mark nothing,
    # while any other process (here: this one, or a notebook opened later) is unaffected.
    import subprocess
    import sys

    store = UnitStore(tmp_path)
    store.request_stop("signal 15")
    child = ("import sys; from evalkit.core.units import UnitKey, UnitStore\n"
             "try:\n"
             f"    UnitStore({str(tmp_path)!r}).mark(UnitKey.quantize('w8a8'), {{}})\n"
             "except KeyboardInterrupt as exc:\n"
             "    print(exc); sys.exit(7)\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "after the run was stopped (signal 15)" in proc.stdout
    assert store.done(UnitKey.quantize("w8a8")) is None
    store.mark(UnitKey.quantize("base"), {"checkpoint": "x"})  # not a child: marked
    assert store.done(UnitKey.quantize("base")) == {"checkpoint": "x"}
    store.clear_stop()
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert store.done(UnitKey.quantize("w8a8")) == {}
