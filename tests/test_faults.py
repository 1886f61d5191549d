"""Fault injection: what evalkit does when things break, on CPU with the real engine.

Each test breaks one thing and checks the same promises: a clear error or a recorded
failure for the unit that broke, the other units carry on where that makes sense, nothing
finished is lost, the exit status says what happened, and no engine process outlives the
test. Every test adds a row to the table printed at the end of the run (tests/conftest.py).

Engine starts are what costs time here (30-120 s each on two cores), so the latency faults
(server killed mid-sweep, a variant whose engine cannot start, corrupt and missing
checkpoints) share one latency stage with four variants, and only the interrupt test runs
whole studies.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from procs import marked_processes

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.errors import RunDirError, StageError
from evalkit.core.units import UnitKey
from evalkit.stages.latency.servers import ServerSweep
from evalkit.stages.latency.sweep import LatencyStage

REPO = Path(__file__).resolve().parent.parent
MARK = "EVALKIT_FAULT_MARK"
ENGINE = {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 256,
          "startup_timeout_s": 300}


# ------------------------------------------------------------------------- processes


@pytest.fixture(scope="module", autouse=True)
def _mark_children() -> Iterator[str]:
    """Tag every process this module starts (inherited environment), to find leftovers."""
    token = f"{os.getpid()}-{time.time_ns()}"
    old = os.environ.get(MARK)
    os.environ[MARK] = token
    yield token
    if old is None:
        os.environ.pop(MARK, None)
    else:
        os.environ[MARK] = old


def engine_processes(token: str) -> list[str]:
    """Live engine/kernel processes started by this module (pid and command line)."""
    return marked_processes(MARK, token)


def assert_no_engine_processes(token: str, wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    left = engine_processes(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = engine_processes(token)
    assert not left, f"engine processes left behind: {left}"


@pytest.fixture(autouse=True)
def _no_leftovers(_mark_children: str) -> Iterator[None]:
    yield
    assert_no_engine_processes(_mark_children)


# ------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny() -> Path:
    from tiny_model import build_tiny_llama

    return build_tiny_llama()


def write_study(tmp: Path, name: str, model_dir: Path, **extra) -> Path:
    data = {"study": name, "model": {"source": "hf_dir", "path": str(model_dir)},
            "variants": [{"name": "base", "scheme": "base"}], "engine": ENGINE,
            "output_root": str(tmp / "out"), **extra}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def evalkit_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit.ui.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _default_sigint() -> None:
    # A shell starting a command in the background sets SIGINT to "ignore", and Python
    # keeps an inherited "ignore": the child must get the default back to be interruptible.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args: str, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(out, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "evalkit.ui.cli", *args], stdout=fh,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, **(env or {})}, preexec_fn=_default_sigint)


def sleepy_notebooks(tmp: Path, seconds: float) -> dict[str, str]:
    """A notebook directory whose 01_quantize only sleeps (for tests of the runner itself)."""
    import nbformat

    d = tmp / "notebooks"
    d.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "evalkit-eval", "display_name": "evalkit eval",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("config_path = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"import time\ntime.sleep({seconds})")]
    nbformat.write(nb, d / "01_quantize.ipynb")
    return {"EVALKIT_NOTEBOOKS": str(d)}


def wait_for(path: Path, pattern: str, proc: subprocess.Popen | None, timeout: float) -> str:
    """Wait until ``path`` holds a line matching ``pattern``; return the line."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            for ln in path.read_text(errors="replace").splitlines():
                if rx.search(ln):
                    return ln
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (code {proc.returncode}) before /{pattern}/ "
                                 f"appeared in {path}")
        time.sleep(0.2)
    raise AssertionError(f"/{pattern}/ did not appear in {path} within {timeout:.0f} s")


def tree_digest(root: Path) -> dict[str, str]:
    from evalkit.core.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


# ------------------------------------------------ (a)(b)(c): one latency stage, four variants


@pytest.fixture(scope="module")
def latency_faults(tmp_path_factory, tiny, _mark_children):
    """One latency stage over four variants, each hit by a different fault:

    * ``base``: its server is SIGKILLed (API server process only, as the OOM killer would)
      while the last of its two points is being measured (the restart that follows a
      crash with points still to measure is tested without an engine below);
    * ``short_ctx``: a checkpoint whose context (128) is below ``engine.max_model_len``
      (256): vLLM refuses to start;
    * ``gone``: the quantize stage recorded a checkpoint directory that no longer exists;
    * ``corrupt``: a checkpoint whose weight file is truncated.
    """
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages.latency.stage import raise_for_failures, run_stage

    tmp = tmp_path_factory.mktemp("latency-faults")
    short = tmp / "short-ctx"
    shutil.copytree(tiny, short)
    cfg_json = json.loads((short / "config.json").read_text())
    cfg_json["max_position_embeddings"] = 128
    (short / "config.json").write_text(json.dumps(cfg_json))
    corrupt = tmp / "corrupt"
    shutil.copytree(tiny, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    study = write_study(
        tmp, "lat-faults", tiny,
        variants=[{"name": "base", "scheme": "base"},
                  {"name": "short_ctx", "scheme": "base"},
                  {"name": "gone", "scheme": "w8a8_int8"},
                  {"name": "corrupt", "scheme": "w8a8_int8"}],
        latency={"workloads": [{"name": "chat", "input_len": 16, "output_len": 48}],
                 "concurrency": [1, 2], "num_prompts": 4, "prompts_per_concurrency": 1,
                 "warmups": 1})
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")
    for name, path in (("base", tiny), ("short_ctx", short), ("gone", tmp / "deleted"),
                       ("corrupt", corrupt)):
        run.units.mark(UnitKey.quantize(name), {"checkpoint": str(path)})

    servers: list = []
    seconds: dict[str, float] = {}
    orig_launch = eng.VLLMServer.launch

    def launch(self):
        servers.append(self)
        return orig_launch(self)

    def timed(fn):
        def wrapper(self, v, *a, **k):
            t = time.monotonic()
            try:
                return fn(self, v, *a, **k)
            finally:
                seconds[v.name] = seconds.get(v.name, 0.0) + time.monotonic() - t
        return wrapper

    killed: dict[str, object] = {}

    def killer():
        # the second point's client log appears when its benchmark starts
        target = run.path / "raw/latency/base/chat_c2_rinf.bench.log"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not target.exists():
            time.sleep(0.05)
        if target.exists() and servers and servers[0].alive():
            killed["pid"] = servers[0].pid
            os.kill(servers[0].pid, signal.SIGKILL)

    mp = pytest.MonkeyPatch()
    mp.setattr(eng.VLLMServer, "launch", launch)
    # a variant's time: finding its checkpoint, starting its server, measuring its points
    # (wait and measure take the variant's session, whose name is the variant's)
    for cls, name in ((LatencyStage, "checkpoint"), (ServerSweep, "launch"),
                      (ServerSweep, "wait"), (ServerSweep, "measure")):
        mp.setattr(cls, name, timed(getattr(cls, name)))
    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(StageError) as err:
            raise_for_failures(cfg, run_stage(cfg, run))
    finally:
        mp.undo()
    total = time.monotonic() - t0
    th.join(1)
    df = rec.read_records(run.stage_records_path("latency"))
    return {"run": run, "df": df, "error": str(err.value), "killed": killed,
            "seconds": seconds, "total": total, "servers": servers}


def _points(df: pd.DataFrame, variant: str) -> pd.DataFrame:
    return df[(df["variant"] == variant) & (df["mode"] == "server")
              & (df["metric"] == "tpot_ms") & (df["stat"] == "mean")]


@pytest.mark.slow
def test_server_killed_mid_sweep(latency_faults, fault_table):
    f = latency_faults
    run, df = f["run"], f["df"]
    assert f["killed"], "the server was never killed (the sweep ended first)"
    pts = _points(df, "base").set_index("concurrency")
    assert pts.loc[1, "status"] == "ok" and pts.loc[1, "value"] > 0
    assert pts.loc[2, "status"] == "failed"
    assert "vLLM server died during this point (killed by SIGKILL)" in pts.loc[2, "note"]
    assert run.units.done(UnitKey.latency("base", "server", "chat", 1, math.inf))
    # resume redoes it
    assert run.units.done(UnitKey.latency("base", "server", "chat", 2, math.inf)) is None
    assert "base/server/chat/c2/rinf" in f["error"]
    # the next variant was started after the kill (and the killed group was cleaned up:
    # the module's process check runs after every test)
    assert len(f["servers"]) >= 2 and f["servers"][1].served_model_name == "short_ctx"
    fault_table("(a) vLLM server SIGKILLed mid-sweep",
                "point c2 failed ('server died ... killed by SIGKILL'); process group "
                "cleaned up; next variants ran; stage error names the point",
                "point c1 (unit marker); c2 left for resume", f["seconds"]["base"])


class _FakeServer:
    """Stands in for VLLMServer: dies when told, counts restarts."""

    def __init__(self) -> None:
        self.up, self.starts, self.startup_s = True, 0, 1.0
        self.log_path = Path("/nonexistent")

    def alive(self) -> bool:
        return self.up

    def exit_description(self) -> str:
        return "running" if self.up else "killed by SIGKILL"

    def stop(self) -> None:
        self.up = False

    def start(self) -> _FakeServer:
        self.starts += 1
        self.up = True
        return self


def test_server_restart_policy(tmp_path, monkeypatch, fault_table):
    """A server that dies mid-sweep is restarted once for the points left; if it dies again,
    the remaining points are recorded as failed, not attempted (no engine needed)."""
    from evalkit.core.errors import EngineError
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages.serving import VariantSession

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    study = write_study(tmp_path, "restart", ck, latency={
        "workloads": [{"name": "w", "input_len": 8, "output_len": 4}],
        "concurrency": [1, 2, 3, 4, 5]})
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")

    class M:
        name, path, load_format = "m", ck, None

    st = LatencyStage(cfg, run, {"base": ck}, M)
    server, measured = _FakeServer(), []
    die_at = {2, 4}  # the 2nd point kills the server; so does the first after the restart

    def point(self, session, tok, vdir, p, vocab):
        if p.concurrency in die_at:
            session.server.up = False
            raise EngineError("vllm bench serve raised ClientConnectorError()")
        measured.append(p.concurrency)

    monkeypatch.setattr(ServerSweep, "server_point", point)
    monkeypatch.setattr(ServerSweep, "write_provenance", lambda *a: {})
    monkeypatch.setattr(LatencyStage, "tokenizer_for", lambda self, ckpt: ckpt)

    class Bar:
        n = 0

        def update(self, k):
            Bar.n += k

    v = cfg.variants[0]
    ServerSweep(st).measure(VariantSession(v, ck, server), st.points("server"), Bar())
    assert measured == [1, 3] and server.starts == 1 and Bar.n == 5
    df = rec.combine(st.frames)
    failed = df[df["status"] == "failed"].set_index("concurrency")["note"]
    assert sorted(failed.index) == [2, 4, 5]
    assert failed[2].startswith("vLLM server died during this point (killed by SIGKILL)")
    assert failed[5].startswith("not measured: the vLLM server died at base/server/w/c4/rinf")
    log = (run.path / "logs/run.log").read_text()
    assert log.count("restarting it once") == 1
    fault_table("(a2) server dies again after its restart (simulated server)",
                "restarted once after the first death; after the second the rest is "
                "recorded failed, not attempted", "points measured before and between")


@pytest.mark.slow
def test_engine_cannot_start(latency_faults, fault_table):
    f = latency_faults
    df = f["df"]
    pts = _points(df, "short_ctx")
    assert len(pts) == 2 and (pts["status"] == "failed").all()
    assert pts["note"].str.contains("max_model_len").all(), pts["note"].iloc[0][:500]
    assert pts["note"].str.contains("exited with code").all()
    # variants after it were still processed, the one before kept its points
    assert set(df["variant"]) >= {"base", "short_ctx", "gone", "corrupt"}
    assert (_points(df, "base")["status"] == "ok").sum() == 1
    assert "short_ctx/server/chat/c1/rinf: vLLM server for 'short_ctx' exited" in f["error"]
    assert "short_ctx/server/chat/c2/rinf: vLLM server for 'short_ctx' exited" in f["error"]
    fault_table("(b) engine refuses to start (max_model_len > model context)",
                "both points recorded failed with vLLM's own error line; next variants ran",
                "base's measured point", f["seconds"]["short_ctx"])


@pytest.mark.slow
def test_corrupt_or_missing_checkpoint(latency_faults, fault_table):
    f = latency_faults
    df, run = f["df"], f["run"]
    gone = _points(df, "gone")
    assert len(gone) == 2 and (gone["status"] == "failed").all()
    assert gone["note"].str.contains("is gone").all()
    bad = _points(df, "corrupt")
    assert len(bad) == 2 and (bad["status"] == "failed").all()
    assert bad["note"].str.contains("truncated or corrupt").all(), bad["note"].iloc[0]
    # found before any engine start: no server log, seconds not minutes
    assert not (run.path / "logs/vllm-server-corrupt.log").exists()
    assert f["seconds"]["corrupt"] < 10 and f["seconds"]["gone"] < 10
    fault_table("(c) checkpoint truncated / directory deleted",
                "both variants failed with the file named, before any engine start",
                "other variants' points", f["seconds"]["corrupt"] + f["seconds"]["gone"])


# ------------------------------------------------------------------------- (d) task data


@pytest.mark.slow
def test_task_data_file_missing(tmp_path, tiny, monkeypatch, fault_table):
    from evalkit.assets import taskdata, taskpack
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages import accuracy as acc

    real = taskpack.build_task_data()
    copy = tmp_path / "taskpack" / real.name
    shutil.copytree(real, copy)
    monkeypatch.setattr(taskdata, "taskpack_cache", lambda: tmp_path / "taskpack")
    manifest = json.loads((copy / "manifest.json").read_text())
    for info in manifest["tasks"]["arc_challenge"].values():
        (copy / "arc_challenge" / info["file"]).unlink()

    study = write_study(tmp_path, "task-data", tiny,
                        variants=[{"name": "base", "scheme": "base", "accuracy_backend": "hf"}],
                        accuracy={"tasks": ["arc_challenge", "arc_easy"], "limit": 4,
                                  "batch_size": 4, "bootstrap": {"resamples": 50}})
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")
    with pytest.raises(StageError, match="base/arc_challenge"):
        acc.run_stage(cfg, run, use_cache=False).raise_for_failures()
    df = rec.read_records(run.stage_records_path("accuracy"))
    bad = df[df["task"] == "arc_challenge"]
    assert len(bad) and (bad["status"] == "failed").all()
    assert bad["note"].str.contains("missing from the task pack").all(), bad["note"].iloc[0]
    assert bad["note"].str.contains("arc_challenge").all()
    ok = df[(df["task"] == "arc_easy") & (df["stat"] == "value")]
    assert len(ok) and (ok["status"] == "ok").all() and (ok["n"] == 4).all()
    assert run.units.done(UnitKey.accuracy("base", "arc_easy"))
    assert run.units.done(UnitKey.accuracy("base", "arc_challenge")) is None
    # as notebook 02 runs it: failed units are data, the tables render, then the stage fails
    from evalkit.ui.cells import evaluate as ek

    run2 = create_run(cfg, study, "r2")
    res2 = acc.run_stage(cfg, run2, use_cache=False)
    df2 = res2.records
    assert (df2.loc[df2["task"] == "arc_challenge", "status"] == "failed").all()
    assert "arc_easy" in ek.show_accuracy(df2).to_html()
    with pytest.raises(StageError, match="arc_challenge"):
        ek.check_stage(res2)
    fault_table("(d) task data file deleted from the task pack",
                "task recorded failed naming the file and the rebuild command; other task ran",
                "arc_easy (records, raw samples, unit)")


@pytest.mark.slow
def test_accuracy_server_killed_during_a_task(tmp_path, tiny, monkeypatch, fault_table):
    """A vLLM server that dies under lm-eval (SIGKILLed, as the OOM killer or an engine fault
    ends it) is started again once and the task evaluated again from its start; when it dies
    again the variant's remaining tasks fail with the reason, and what finished is kept."""
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages import accuracy as acc
    from evalkit.stages.accuracy import runner

    study = write_study(tmp_path, "acc-kill", tiny,
                        variants=[{"name": "base", "scheme": "base", "accuracy_backend": "vllm"}],
                        accuracy={"tasks": ["arc_easy", "piqa", "winogrande"], "limit": 4,
                                  "batch_size": 4, "bootstrap": {"resamples": 50}})
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")
    run.units.mark(UnitKey.quantize("base"), {"checkpoint": str(tiny)})
    servers: list = []
    orig_launch, orig_eval = eng.VLLMServer.launch, runner.run_lm_eval
    calls: list[int] = []

    def launch(self):
        servers.append(self)
        return orig_launch(self)

    def lm_eval_on_a_dying_server(lm, lm_task, cfg, tm):
        calls.append(len(calls) + 1)
        if len(calls) in (1, 3):  # arc_easy's first attempt, piqa's (after the restart)
            server = servers[-1]
            os.kill(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while server.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        return orig_eval(lm, lm_task, cfg, tm)

    monkeypatch.setattr(eng.VLLMServer, "launch", launch)
    monkeypatch.setattr(runner, "run_lm_eval", lm_eval_on_a_dying_server)
    t0 = time.monotonic()
    with pytest.raises(StageError, match="base/piqa"):
        acc.run_stage(cfg, run, use_cache=False).raise_for_failures()
    seconds = time.monotonic() - t0
    assert len(servers) == 2 and calls == [1, 2, 3]  # winogrande was not attempted
    log = (run.path / "logs/run.log").read_text()
    assert log.count("restarting it once and evaluating the task again") == 1
    assert "accuracy base/arc_easy: vLLM server died during the task (killed by SIGKILL" in log
    df = rec.read_records(run.stage_records_path("accuracy"))
    easy = df[(df["task"] == "arc_easy") & (df["stat"] == "value")]
    assert len(easy) and (easy["status"] == "ok").all() and (easy["n"] == 4).all()
    assert easy["note"].str.contains("died during this task (killed by SIGKILL) and was "
                                     "restarted", regex=False).all()
    assert run.units.done(UnitKey.accuracy("base", "arc_easy"))
    for task in ("piqa", "winogrande"):
        bad = df[df["task"] == task]
        assert len(bad) and (bad["status"] == "failed").all()
        assert bad["note"].str.contains("died again during base/piqa").all(), bad["note"].iloc[0]
        assert run.units.done(UnitKey.accuracy("base", task)) is None
    # the server's one log holds both starts and the death
    assert (run.path / "logs/vllm-accuracy-base.log").read_text().count("# evalkit:") == 2
    fault_table("(a3) accuracy server SIGKILLed under lm-eval, then again after its restart",
                "restarted once, the task evaluated again (note says so); the second death "
                "fails the variant's remaining tasks, not attempted",
                "arc_easy (records, raw samples, unit)", seconds)


def test_accuracy_server_killed_beside_another_with_lm_eval_processes(tmp_path, tiny,
                                                                      fault_table):
    """With ``accuracy.concurrent_servers`` (lm-eval in a process per variant), a server that
    dies before its variant's first task is started again once; that variant's lm-eval
    process builds its model for the new address and the task runs again from its start,
    with the scores the other variant (same weights, its server never killed) gets."""
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages import accuracy as acc
    from evalkit.stages.accuracy.server import VariantServer

    study = write_study(tmp_path, "acc-kill-beside", tiny, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "vllm"},
        {"name": "again", "scheme": "base", "accuracy_backend": "vllm"}],
        engine={**ENGINE, "parallel_starts": 2},
        accuracy={"tasks": ["arc_easy", "piqa"], "limit": 4, "batch_size": 4,
                  "concurrent_servers": True, "bootstrap": {"resamples": 50}})
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")
    for v in ("base", "again"):
        run.units.mark(UnitKey.quantize(v), {"checkpoint": str(tiny)})
    orig_start = VariantServer.start
    killed: list[int] = []

    def start_then_die(self, notes):
        lm = orig_start(self, notes)
        if self.variant.name == "again" and not killed:  # up, then killed: arc_easy fails
            server = self.session.server
            killed.append(server.pid)
            os.kill(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while server.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        return lm

    mp = pytest.MonkeyPatch()
    mp.setattr(VariantServer, "start", start_then_die)
    t0 = time.monotonic()
    try:
        acc.run_stage(cfg, run, use_cache=False).raise_for_failures()
    finally:
        mp.undo()
    seconds = time.monotonic() - t0
    assert len(killed) == 1
    log = (run.path / "logs/run.log").read_text()
    assert "accuracy again/arc_easy: vLLM server died during the task (killed by SIGKILL" in log
    assert log.count("restarting it once and evaluating the task again") == 1
    # the lm-eval process built its model twice, for the first address and for the new one
    assert log.count("accuracy again: lm-eval process ready for ") == 2
    assert log.count("accuracy base: lm-eval process ready for ") == 1
    for t in ("arc_easy", "piqa"):
        want = pd.read_parquet(run.path / f"raw/accuracy/base/{t}/scores.parquet")
        got = pd.read_parquet(run.path / f"raw/accuracy/again/{t}/scores.parquet")
        pd.testing.assert_frame_equal(got, want)
        assert run.units.done(UnitKey.accuracy("again", t))
    fault_table("(a4) accuracy server SIGKILLed with lm-eval in a process per variant",
                "restarted once; the variant's lm-eval process rebuilt its model for the new "
                "address and the task ran again; the other variant went on",
                "both variants' scores (equal: same weights)", seconds)


# ------------------------------------------------------------------------- (e) read-only disk


def _writable(d: Path) -> bool:
    try:
        (d / ".probe").write_text("x")
    except OSError:
        return False
    (d / ".probe").unlink()
    return True


@pytest.fixture
def read_only(tmp_path):
    """``read_only(path)`` makes a tree unwritable (chmod; for root, the immutable flag)."""
    done: list[Path] = []

    def make(path: Path) -> None:
        subprocess.run(["chmod", "-R", "a-w", str(path)], capture_output=True)
        done.append(path)
        if _writable(path) and shutil.which("chattr"):
            subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True)
        if _writable(path):
            pytest.skip("cannot make a directory read-only here (root without chattr)")

    yield make
    for p in done:
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-R", "-i", str(p)], capture_output=True)
        subprocess.run(["chmod", "-R", "u+w", str(p)], capture_output=True)


def test_read_only_output_dir(tmp_path, tiny, read_only, fault_table):
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study

    study = write_study(tmp_path, "ro", tiny)
    cfg = load_study(study)
    run = create_run(cfg, study, "r1")
    rows = [dict(variant="base", scheme="base", method="none", stage="quantize",
                 metric="weight_bytes", stat="value", value=1.0e6, unit="bytes")]
    run.write_stage_records("quantize", rec.make_records(rows, run_id="r1", study="ro"))
    run.units.mark(UnitKey.quantize("base"), {"checkpoint": str(tiny)})
    before = tree_digest(run.path)
    read_only(run.path)

    # resuming into it: one line, exit 3, no traceback
    proc = evalkit_cli("run", str(study), "--resume", "r1", "--stages", "report",
                       "--no-progress", timeout=120)
    assert proc.returncode == 3, proc.stdout[-1500:] + proc.stderr[-1500:]
    err = proc.stderr.strip()
    assert err.startswith("evalkit: ") and err.count("\n") == 0, err
    assert "cannot write" in err and "read-only" in err and "Traceback" not in err
    # a new run under an output root that cannot be written: refused by validation (exit 2)
    read_only(tmp_path / "out")
    proc = evalkit_cli("run", str(study), "--no-progress", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "output_root" in proc.stderr and "not writable" in proc.stderr
    # writing records in-process: a RunDirError, and the file on disk is the old one
    with pytest.raises(RunDirError, match="cannot write"):
        run.write_stage_records("quantize", rec.make_records(rows, run_id="r1", study="ro"))
    assert tree_digest(run.path) == before
    fault_table("(e) output directory read-only (full disk)",
                "resume: exit 3, one line 'cannot write ... read-only'; new run: exit 2 "
                "from validation; write: RunDirError",
                f"all {len(before)} files of the run byte-identical")


# ------------------------------------------------------------ (f) interrupting `evalkit run`


@pytest.mark.slow
def test_interrupt_between_and_inside_stages(tmp_path, tiny, _mark_children, fault_table):
    study = write_study(
        tmp_path, "intr", tiny,
        # Points long enough (8 requests of 200 tokens: seconds on this model) that the
        # SIGTERM sent once c1 is logged lands inside c2: with 2 requests of 16 tokens a
        # warm client measured c2 in 0.1 s, before the signal was sent.
        latency={"workloads": [{"name": "chat", "input_len": 16, "output_len": 200}],
                 "concurrency": [1, 2], "num_prompts": 8, "prompts_per_concurrency": 4,
                 "warmups": 0})
    run_dir = tmp_path / "out/intr/r1"
    log = run_dir / "logs/run.log"
    status = lambda: json.loads((run_dir / "status.json").read_text())["stages"]  # noqa: E731

    # 1. SIGINT between stages: right after 01 is done, before 02 has done anything
    # (runs 1 and 2 leave out stages the interruption does not need; run 3 runs all four)
    stages = ("--stages", "quantize", "latency")
    p = start_cli("run", str(study), "--run-id", "r1", *stages, "--no-progress",
                  out=tmp_path / "1.out")
    wait_for(log, r"stage 01_quantize: done", p, 600)
    p.send_signal(signal.SIGINT)
    assert p.wait(120) == 130, (tmp_path / "1.out").read_text()[-2000:]
    out1 = (tmp_path / "1.out").read_text()
    assert "interrupted" in out1 and "--resume r1" in out1
    assert status()["quantize"]["state"] == "done"
    assert_no_engine_processes(_mark_children)

    # 2. SIGTERM inside the latency stage, after its first point, with a server running
    p = start_cli("run", str(study), "--resume", "r1", "--stages", "latency", "--no-progress",
                  out=tmp_path / "2.out")
    wait_for(log, r"latency: base/server/chat/c1/rinf: \d+ ok", p, 600)
    p.send_signal(signal.SIGTERM)
    assert p.wait(120) == 130, (tmp_path / "2.out").read_text()[-2000:]
    assert status()["latency"]["state"] == "interrupted"
    assert_no_engine_processes(_mark_children)
    done_c1 = sorted((run_dir / "units/latency").glob("*.json"))
    assert len(done_c1) == 1, done_c1
    c1 = rec.read_records(run_dir / json.loads(done_c1[0].read_text())["records"])

    # 3. resume to the end: finished units skipped (and the log says so), no duplicates
    proc = evalkit_cli("run", str(study), "--resume", "r1", "--no-progress", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = log.read_text()
    assert "resume: finished units kept and skipped (latency: 1, quantize: 1)" in text
    assert "quantize: skipped base (done)" in text
    assert "latency: base/server/chat/c1/rinf already measured" in text
    assert text.count("latency: base/server/chat/c1/rinf: ") == 1  # measured once, ever
    df = rec.load_runs(run_dir)
    keys = df[rec.KEY].astype("string").fillna("<NA>")
    assert not keys.duplicated().any()
    lat = df[(df["stage"] == "latency") & (df["mode"] == "server") & (df["status"] == "ok")]
    assert set(lat["concurrency"].dropna().astype(int)) == {1, 2}
    kept = lat[lat["concurrency"] == 1].merge(c1, on=rec.KEY, suffixes=("", "_unit"))
    assert len(kept) == len(c1[(c1["mode"] == "server") & (c1["status"] == "ok")]) > 0
    assert (kept["value"].fillna(-1) == kept["value_unit"].fillna(-1)).all()
    assert all(s["state"] == "done" for s in status().values())
    assert (run_dir / "report.html").is_file()
    fault_table("(f) SIGINT between stages, SIGTERM inside latency, then resume",
                "exit 130 twice with the resume command; resume exit 0, log lists what it "
                "skipped",
                "quantize unit, latency point c1 (same values, measured once, no duplicates)")


# ------------------------------------------------------------ (g) two runs on one run id


def test_two_runs_same_run_id(tmp_path, tiny, fault_table):
    study = write_study(tmp_path, "twice", tiny)
    # the runner and its lock are what is tested: the stage itself only sleeps
    env = sleepy_notebooks(tmp_path, 3)
    args = ("run", str(study), "--run-id", "g1", "--stages", "quantize", "--no-progress")
    a = start_cli(*args, out=tmp_path / "a.out", env=env)
    b = start_cli(*args, out=tmp_path / "b.out", env=env)
    codes = sorted([a.wait(600), b.wait(600)])
    outs = (tmp_path / "a.out").read_text() + (tmp_path / "b.out").read_text()
    assert codes == [0, 3], outs[-3000:]
    assert "already exists" in outs and "--resume g1" in outs
    run_dir = tmp_path / "out/twice/g1"
    before = tree_digest(run_dir / "records")

    # a resume while another process works in the run: refused, the run is not touched
    c = start_cli("run", str(study), "--resume", "g1", "--stages", "quantize", "--no-progress",
                  out=tmp_path / "c.out", env=env)
    wait_for(run_dir / "logs/run.log", r"resume: finished units", c, 300)
    proc = evalkit_cli("run", str(study), "--resume", "g1", "--no-progress", timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "in use by pid" in proc.stderr and "Traceback" not in proc.stderr
    assert c.wait(600) == 0, (tmp_path / "c.out").read_text()[-2000:]
    assert tree_digest(run_dir / "records").keys() == before.keys()
    log = (run_dir / "logs/run.log").read_text()
    assert log.count("stage 01_quantize: done") == 2  # the first run and the resume, no more
    fault_table("(g) two processes on one run id",
                "simultaneous new runs: one exit 0, one exit 3 'already exists'; resume while "
                "running: exit 3 'in use by pid N'",
                "the run of the process that won")
