"""evalkit archive: a finished run slimmed in place; its readers still read it."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fake_runs import _correct, _ttft, make_run
from retired_runs import retired_run

from evalkit.analysis import compare as cmp
from evalkit.analysis.index import write_index
from evalkit.core.archive import GZIP_MIN_BYTES, archive_run, tree_bytes
from evalkit.core.errors import ArchiveError
from evalkit.core.io import file_lock, json_exists, read_json
from evalkit.ui.cli import main

N_REQUESTS = 1500  # per-request JSON well over GZIP_MIN_BYTES
POINT = "raw/latency/w8/chat_c2_rinf.json"
STAGE_NOTEBOOKS = ("01_quantize", "02_accuracy", "03_latency", "04_report")

DUPLICATES = {
    "report.html", "run.lock",
    *(f"html/{nb}.code.html" for nb in STAGE_NOTEBOOKS),
    *(f"html/{nb}.html" for nb in STAGE_NOTEBOOKS[:3]),
}
COMPRESSED = {POINT, "logs/run.log", "logs/vllm-server-w8.log"}
KEPT = [
    "config.yaml", "env.json", "status.json", "records.parquet", "html/04_report.html",
    *(f"notebooks/{nb}.ipynb" for nb in STAGE_NOTEBOOKS),
    "raw/accuracy/w8/arc_easy/scores.parquet", "raw/accuracy/w8/arc_easy/results.json",
    "raw/latency/w8/chat_c2_rinf.summary.json", "raw/latency/w8/provenance.json",
    "raw/latency/w8/offline.json", "raw/latency/w8/units/w8_server_chat_c2_rinf.json",
    "raw/latency/w8/chat_c2_rinf.bench.log",
    "units/latency/w8_server_chat_c2_rinf.json",
]


def _html(title: str, n: int) -> str:
    return f"<html><body><h1>{title}</h1>" + "<p>cell output</p>\n" * n + "</body></html>\n"


def finished_run(root: Path, run_id: str, *, created: str = "2026-01-02T00:00:00",
                 ttft_scale: float = 1.0) -> Path:
    """A finished run as the runner leaves it: :func:`test_compare.make_run` plus the
    status, executed notebooks, both HTML renderings, the root report copy, logs, the
    small raw files read by name, and a stale run.lock."""
    d = make_run(root, run_id, correct=_correct(0.6), ttft_s=_ttft(0.2, 0.05, n=N_REQUESTS)
                 * ttft_scale, created=created)
    (d / "status.json").write_text(json.dumps({"stages": {
        s.split("_", 1)[1]: {"state": "done", "time_utc": created} for s in STAGE_NOTEBOOKS}}))
    for d_ in ("notebooks", "html", "logs", "units/latency", "raw/latency/w8/units"):
        (d / d_).mkdir(parents=True, exist_ok=True)
    for nb in STAGE_NOTEBOOKS:
        (d / "notebooks" / f"{nb}.ipynb").write_text(json.dumps(
            {"cells": [], "metadata": {"papermill": {"parameters": {"run_dir": str(d)}}},
             "nbformat": 4, "nbformat_minor": 5}))
        (d / "html" / f"{nb}.html").write_text(_html(nb, 400))
        (d / "html" / f"{nb}.code.html").write_text(_html(nb + " with code", 600))
    shutil.copyfile(d / "html/04_report.html", d / "report.html")
    (d / "logs/run.log").write_text("".join(f"00:00:{i % 60:02d} stage step {i}\n"
                                            for i in range(300)))
    (d / "logs/vllm-server-w8.log").write_text("INFO loading weights\n" * 5000)
    # small files read by exact name stay plain whatever their size
    big = {"values": list(range(20000))}
    for rel in ("raw/latency/w8/chat_c2_rinf.summary.json", "raw/latency/w8/provenance.json",
                "raw/latency/w8/offline.json", "raw/latency/w8/units/w8_server_chat_c2_rinf.json"):
        (d / rel).write_text(json.dumps(big))
    (d / "raw/accuracy/w8/arc_easy/results.json").write_text(json.dumps({"results": {}}))
    (d / "raw/latency/w8/chat_c2_rinf.bench.log").write_text("bench ok\n")
    (d / "units/latency/w8_server_chat_c2_rinf.json").write_text('{"status": "ok"}')
    (d / "run.lock").write_text("pid 12345")
    return d


def snapshot(d: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``d``."""
    return {f.relative_to(d).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(d.rglob("*")) if f.is_file()}


def test_archive_removes_copies_and_compresses_raw_data_and_logs(tmp_path):
    d = finished_run(tmp_path, "b")
    assert (d / POINT).stat().st_size > GZIP_MIN_BYTES
    detail = json.loads((d / POINT).read_text())
    log = (d / "logs/vllm-server-w8.log").read_bytes()
    kept = {rel: (d / rel).read_bytes() for rel in KEPT}
    before = tree_bytes(d)
    size = {rel: (d / rel).stat().st_size for rel in DUPLICATES | COMPRESSED}

    r = archive_run(d)

    assert r.path == d.resolve() and not r.dry_run and r.changed
    assert set(r.removed) == DUPLICATES
    assert set(r.compressed) == COMPRESSED
    assert r.bytes_before == before
    assert r.bytes_after == tree_bytes(d)
    gz = {rel: (d / (rel + ".gz")).stat().st_size for rel in COMPRESSED}
    assert r.bytes_after == before - sum(size.values()) + sum(gz.values())
    assert gz[POINT] < 0.5 * size[POINT] and gz["logs/vllm-server-w8.log"] < 1000
    for rel in DUPLICATES | COMPRESSED:
        assert not (d / rel).exists(), rel
    for rel in COMPRESSED:
        assert (d / (rel + ".gz")).is_file(), rel
    assert {rel: (d / rel).read_bytes() for rel in KEPT} == kept  # untouched
    assert sorted(p.name for p in d.rglob("*.tmp")) == []
    # the readers' view of the raw data is unchanged
    assert json_exists(d / POINT) and read_json(d / POINT) == detail
    assert gzip.decompress((d / "logs/vllm-server-w8.log.gz").read_bytes()) == log


def test_readers_load_an_archived_run(tmp_path):
    a = finished_run(tmp_path, "a", created="2026-01-01T00:00:00")
    b = finished_run(tmp_path, "b", ttft_scale=1.3)
    plain = cmp.compare_runs(a, b)
    requests = cmp.load_run_data(b).requests

    archive_run(a)
    archive_run(b)

    data = cmp.load_run_data(b)
    assert data.requests == requests
    assert len(data.requests[("w8", "chat", 2, float("inf"))]["ttft_ms"]) == N_REQUESTS
    archived = cmp.compare_runs(a, b)
    pd.testing.assert_frame_equal(archived, plain)
    ttft = archived[(archived["metric"] == "ttft_ms") & (archived["stat"] == "p50")].iloc[0]
    assert ttft["method"].startswith("bootstrap of the p50 over 1500 / 1500")
    assert ttft["regression"] and ttft["ci_low"] > 0
    assert cmp.previous_run(b) == a.resolve()


def test_index_links_the_kept_report_relatively(tmp_path):
    d = finished_run(tmp_path / "outputs", "b")
    archive_run(d)
    page = write_index(tmp_path / "outputs").read_text()
    assert '<a href="study/b/html/04_report.html">b</a>' in page
    assert str(tmp_path) not in page  # no absolute path anywhere


def test_second_archive_changes_nothing(tmp_path):
    d = finished_run(tmp_path, "b")
    first = archive_run(d)
    files = snapshot(d)

    again = archive_run(d)

    assert snapshot(d) == files
    assert not again.changed and again.removed == () and again.compressed == ()
    assert again.bytes_before == again.bytes_after == first.bytes_after
    assert not (d / "run.lock").exists()


def test_dry_run_changes_nothing_and_predicts_the_result(tmp_path):
    d = finished_run(tmp_path, "b")
    files = snapshot(d)

    dry = archive_run(d, dry_run=True)

    assert snapshot(d) == files
    real = archive_run(d)
    assert dry.dry_run and not real.dry_run
    assert (dry.bytes_before, dry.bytes_after) == (real.bytes_before, real.bytes_after)
    assert (dry.removed, dry.compressed) == (real.removed, real.compressed)


def test_a_run_in_use_is_refused(tmp_path, capsys):
    d = finished_run(tmp_path, "b")
    (d / "run.lock").unlink()
    with file_lock(d / "run.lock", what="run b"):
        files = snapshot(d)
        for dry in (False, True):
            with pytest.raises(ArchiveError, match=r"run b is in use by pid \d+"):
                archive_run(d, dry_run=dry)
        assert main(["archive", str(d)]) == 3
        assert snapshot(d) == files
    assert "cannot archive" in capsys.readouterr().err
    assert archive_run(d).changed  # once the lock is free


def test_unfinished_or_foreign_directories_are_refused(tmp_path, capsys):
    d = finished_run(tmp_path, "b")
    status = json.loads((d / "status.json").read_text())
    status["stages"]["latency"]["state"] = "running"
    (d / "status.json").write_text(json.dumps(status))
    files = snapshot(d)
    with pytest.raises(ArchiveError, match=r"stage\(s\) latency still running"):
        archive_run(d)
    assert snapshot(d) == {**files, "run.lock": snapshot(d)["run.lock"]}
    assert (d / POINT).is_file() and (d / "report.html").is_file()

    with pytest.raises(ArchiveError, match="not a run directory"):
        archive_run(tmp_path)
    assert main(["archive", str(tmp_path), str(d)]) == 3
    err = capsys.readouterr().err
    assert "not a run directory (no config.yaml)" in err and "latency still running" in err


def test_a_run_resumed_after_archiving_is_folded_in(tmp_path):
    d = finished_run(tmp_path, "b")
    archive_run(d)
    old_log = gzip.decompress((d / "logs/run.log.gz").read_bytes())
    # a resume appends to a fresh plain log and measures a point again
    (d / "logs/run.log").write_text("01:00:00 resume: stages done earlier: all\n")
    new_point = {"ttfts": [0.1] * 10, "errors": [""] * 10}
    (d / POINT).write_text(json.dumps(new_point))
    assert read_json(d / POINT) == new_point  # the plain file wins while both exist

    r = archive_run(d)

    assert set(r.compressed) == {POINT, "logs/run.log"}
    assert not (d / POINT).exists() and read_json(d / POINT) == new_point
    assert gzip.decompress((d / "logs/run.log.gz").read_bytes()) == (
        old_log + b"01:00:00 resume: stages done earlier: all\n")
    # cut off after the .gz was renamed into place, before the log was removed
    shutil.copyfile(d / "logs/run.log.gz", tmp_path / "saved.gz")
    (d / "logs/run.log").write_bytes(b"01:00:00 resume: stages done earlier: all\n")
    archive_run(d)
    assert (d / "logs/run.log.gz").read_bytes() == (tmp_path / "saved.gz").read_bytes()
    assert not (d / "logs/run.log").exists()


def test_cli_prints_sizes_before_and_after(tmp_path, capsys):
    a = finished_run(tmp_path, "a", created="2026-01-01T00:00:00")
    b = finished_run(tmp_path, "b")
    size_a = tree_bytes(a)
    assert main(["archive", str(a), str(b), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(f"{a}: {size_a:,} -> ")
    assert "(dry run: nothing changed)" in out[0] and tree_bytes(a) == size_a
    assert main(["archive", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{a}: {size_a:,} -> {tree_bytes(a):,} bytes ({size_a / 2**20:.2f} -> "
                      f"{tree_bytes(a) / 2**20:.2f} MiB); 3 gzipped, 9 removed")
    assert main(["archive", str(a)]) == 0
    assert capsys.readouterr().out.strip().endswith("; already archived")




def test_latency_records_rebuild_from_an_archived_reference_run(tmp_path):
    """The committed runs are archived: their per-request data is read from the .gz."""
    from evalkit.core import records as rec
    from evalkit.core.run import open_run
    from evalkit.stages.latency.rebuild import rebuild_records

    run_dir = retired_run("hopper-llama8b-marlin/m1", tmp_path / "git")
    archive_run(run_dir)
    assert list(run_dir.glob("raw/latency/*/*_c64_rinf.json.gz"))
    assert not list(run_dir.glob("raw/latency/*/*_c64_rinf.json"))
    committed = rec.read_records(run_dir / "records/latency.parquet")

    df = rebuild_records(open_run(run_dir))

    key = [*rec.KEY]
    ok = committed[(committed["mode"] == "server") & (committed["status"] == "ok")
                   & committed["metric"].isin(["ttft_ms", "tpot_ms"])]
    m = ok.merge(df, on=key, suffixes=("", "_rebuilt"))
    assert len(m) == len(ok) > 0
    pd.testing.assert_series_equal(m["value_rebuilt"], m["value"], check_names=False,
                                   rtol=1e-9)


def test_archive_drops_mix_prompt_files_and_keeps_their_digest(tmp_path):
    d = finished_run(tmp_path, "p")
    vdir = d / "raw/latency/w8"
    text = "".join(json.dumps({"prompt": f"[p-{i}]\nsome text", "output_tokens": 9}) + "\n"
                   for i in range(50)).encode()
    (vdir / "chat_c8_r2_t0.prompts.jsonl").write_bytes(text)
    (vdir / "chat_c8_r2.summary.json").write_text(json.dumps({"trials": 1}))
    r = archive_run(d)
    assert "raw/latency/w8/chat_c8_r2_t0.prompts.jsonl" in r.removed
    assert not list(vdir.glob("*.prompts.jsonl*"))
    summary = read_json(vdir / "chat_c8_r2.summary.json")
    got = summary["prompts"]["chat_c8_r2_t0.prompts.jsonl"]
    assert got["sha256"] == hashlib.sha256(text).hexdigest() and got["requests"] == 50
    assert summary["trials"] == 1
    assert not archive_run(d).removed  # a second archive changes nothing
