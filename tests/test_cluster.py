"""``evalkit run --cluster ray``: each variant's stages as Ray tasks on a local Ray instance.

The local instance is what ``--cluster ray`` starts: one node with this machine's two CPUs,
so two variant tasks run side by side (two Ray workers) and a latency task holds the whole
node. The end-to-end tests are marked slow (minutes on two cores).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from procs import marked_processes
from smoke_study import REPO, evalkit

from evalkit import cluster as cl
from evalkit.core import records as rec
from evalkit.core.errors import ClusterError
from evalkit.core.run import Run
from evalkit.core.specs import EngineSpec
from evalkit.core.units import WORKER_PID_ENV, UnitKey, UnitStore

# ------------------------------------------------------------------ without Ray running


def test_cluster_spec_parse():
    assert cl.ClusterSpec.parse("ray") == cl.ClusterSpec("ray", None)
    assert cl.ClusterSpec.parse("ray:auto").address == "auto"
    assert cl.ClusterSpec.parse("ray:10.0.0.1:6379").address == "10.0.0.1:6379"
    assert str(cl.ClusterSpec.parse("ray:ray://head:10001")) == "ray:ray://head:10001"
    for bad in ("spark", "ray:", "", "slurm:ray"):
        with pytest.raises(ClusterError, match="allowed are 'ray'"):
            cl.ClusterSpec.parse(bad)


def test_gpus_per_variant_task():
    def cfg(**engine):
        return SimpleNamespace(engine=EngineSpec(**engine))

    assert cl.variant_gpus(cfg(device="cpu", tensor_parallel_size=1)) == 0
    assert cl.variant_gpus(cfg(device="cuda", tensor_parallel_size=2)) == 2
    # an engine spec with pipeline parallelism asks for tp x pp GPUs
    assert cl.variant_gpus(cfg(device="cuda", tensor_parallel_size=2,
                               pipeline_parallel_size=3)) == 6


def _fake_ray(*nodes: tuple[str, str, dict[str, float]]) -> SimpleNamespace:
    """What :func:`evalkit.cluster.latency_options` and ``check_fits`` read of a cluster:
    its live nodes (id, host name, resources)."""
    return SimpleNamespace(nodes=lambda: [
        {"Alive": True, "NodeID": nid, "NodeManagerHostname": host,
         "NodeManagerAddress": f"10.0.0.{i}", "Resources": res}
        for i, (nid, host, res) in enumerate(nodes)])


def _gpu_study(tp: int = 1, **engine) -> SimpleNamespace:
    return SimpleNamespace(engine=EngineSpec(device="cuda", tensor_parallel_size=tp, **engine))


def test_latency_runs_on_one_accelerator_type_or_one_node():
    h100 = {"GPU": 8.0, "CPU": 64.0, "accelerator_type:H100": 1.0}
    h200 = {"GPU": 8.0, "CPU": 64.0, "accelerator_type:H200": 1.0}
    one_type = _fake_ray(("n1", "gpu1", h100), ("n2", "gpu2", h100))
    opts = cl.latency_options(one_type, _gpu_study(2), cl.Placement())
    assert opts == {"num_cpus": 1, "num_gpus": 2, "accelerator_type": "H100"}
    n1, n2 = "a1" * 28, "b2" * 28  # Ray node ids: 28 bytes in hex
    mixed = _fake_ray((n1, "gpu1", h100), (n2, "gpu2", h200))
    with pytest.raises(ClusterError, match=r"accelerator types \['H100', 'H200'\].*--accelerator"):
        cl.latency_options(mixed, _gpu_study(), cl.Placement())
    picked = cl.latency_options(mixed, _gpu_study(), cl.Placement(accelerator_type="H200"))
    assert picked["accelerator_type"] == "H200"
    with pytest.raises(ClusterError, match="'A100': not in this cluster"):
        cl.latency_options(mixed, _gpu_study(), cl.Placement(accelerator_type="A100"))
    pinned = cl.latency_options(mixed, _gpu_study(), cl.Placement(latency_node="gpu2"))
    assert pinned["scheduling_strategy"].node_id == n2
    assert "accelerator_type" not in pinned
    with pytest.raises(ClusterError, match="--latency-node 'gpu9': no live node"):
        cl.latency_options(mixed, _gpu_study(), cl.Placement(latency_node="gpu9"))


def test_a_variant_that_fits_no_node_is_refused_before_any_task():
    ray = _fake_ray(("n1", "gpu1", {"GPU": 4.0}), ("n2", "gpu2", {"GPU": 4.0}))
    cl.check_fits(ray, _gpu_study(4))
    with pytest.raises(ClusterError, match="needs 8 GPUs .* largest node of this cluster has 4"):
        cl.check_fits(ray, _gpu_study(4, pipeline_parallel_size=2))
    with pytest.raises(ClusterError, match="engine.executor: ray under --cluster"):
        cl.check_fits(ray, _gpu_study(2, executor="ray"))
    cl.check_fits(ray, _gpu_study(2, executor="mp"))


def test_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ClusterError, match=r"needs the Python package 'ray'.*ray==2\.60\.0"):
        cl.require_ray()


def test_bad_cluster_options_fail_before_a_run_exists(tmp_path):
    from smoke_study import smoke_config

    study = smoke_config(tmp_path)
    proc = evalkit("run", str(study), "--cluster", "spark", "--no-progress", timeout=120)
    assert proc.returncode == 1 and "allowed are 'ray'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = evalkit("run", str(study), "--latency-node", "n1", "--no-progress", timeout=120)
    assert proc.returncode == 4 and "need --cluster" in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


def _states(root: str, variant: str, n: int) -> None:
    store = UnitStore(Path(root))
    for i in range(n):
        store.set_stage_state(f"s{i}", "done", variant=variant)


def _log(root: str, variant: str, n: int) -> None:
    run = Run(Path(root)).scoped([variant])
    for i in range(n):
        run.log(f"line {i} " + "x" * 300)


def test_concurrent_workers_keep_every_state_and_log_line(tmp_path):
    """status.json and logs/run.log written by four processes at once: every state of every
    worker is kept (read-modify-write under a lock) and every log line is whole."""
    ctx = multiprocessing.get_context("fork")
    UnitStore(tmp_path).set_stage_state("quantize", "running")
    for target in (_states, _log):
        procs = [ctx.Process(target=target, args=(str(tmp_path), f"v{k}", 25)) for k in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    store = UnitStore(tmp_path)
    assert store.stage_states() == {"quantize": store.stage_states()["quantize"]}
    states = store.variant_states()
    assert sorted(states) == ["v0", "v1", "v2", "v3"]
    assert all(len(by_stage) == 25 for by_stage in states.values())
    lines = (tmp_path / "logs" / "run.log").read_text().splitlines()
    assert len(lines) == 100
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d \[v\d\] line \d+ x{300}", ln) for ln in lines)


def test_a_kernel_whose_worker_died_marks_nothing(tmp_path, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = UnitStore(tmp_path)
    monkeypatch.setenv(WORKER_PID_ENV, str(os.getpid()))  # the worker lives: marked
    store.mark(UnitKey.quantize("a"), {"checkpoint": "x"})
    assert store.done(UnitKey.quantize("a"))
    monkeypatch.setenv(WORKER_PID_ENV, str(gone.pid))
    with pytest.raises(KeyboardInterrupt, match="cluster worker .* is gone"):
        store.mark(UnitKey.quantize("b"), {"checkpoint": "x"})
    assert store.done(UnitKey.quantize("b")) is None


def test_scoped_run_writes_its_part_only(tmp_path):
    run = Run(tmp_path).scoped(["w8"])
    df = rec.make_records([{"variant": "w8", "metric": "m", "stat": "value", "value": 1.0,
                            "unit": "s"}], run_id="r", study="s", model="m", stage="quantize")
    p = run.write_stage_records("quantize", df)
    assert p == tmp_path / "records" / "parts" / "w8" / "quantize.parquet"
    assert not (tmp_path / "records.parquet").exists()
    assert not (tmp_path / "records" / "quantize.parquet").exists()


# ------------------------------------------------------------------ end to end, local Ray


def fresh_cache(tmp: Path) -> dict[str, str]:
    """An engine cache without quantized checkpoints and lm-eval results (so a run computes
    them again), sharing the prepared packaged models and task pack of the default cache."""
    from evalkit.core.cache import cache_dir

    root = tmp / "cache"
    root.mkdir()
    for d in ("gguf", "models", "presets", "taskpack", "test-models", "tokenizers"):
        if (cache_dir() / d).is_dir():
            (root / d).symlink_to(cache_dir() / d)
    return {"EVALKIT_CACHE": str(root)}


#: the columns that identify a record and must agree between two runs of one study
IDENT = [c for c in rec.KEY if c != "run_id"] + ["load", "scheme", "method", "unit",
                                                 "higher_is_better", "backend", "status"]


def _table(run_dir: Path) -> pd.DataFrame:
    df = rec.load_runs(run_dir)
    keys = df[IDENT].astype("string").fillna("<NA>")
    assert not keys.duplicated().any(), df[keys.duplicated(keep=False)][IDENT]
    return df.assign(_key=keys.agg("|".join, axis=1)).set_index("_key").sort_index()


#: quantize metrics that are wall times (the rest: sizes and bytes, equal by construction)
WALL_TIMES = {"quantize_time_s"}
#: a checkpoint's size counts its provenance file (evalkit_quantize.json: creation time,
#: load and save seconds), whose length varies by a few bytes between two builds
PROVENANCE_BYTES = 4096


@pytest.mark.slow
def test_cluster_run_matches_the_sequential_run(smoke_run, tmp_path):
    """The smoke study with ``--cluster ray`` (local Ray, two CPUs: two workers) gives the
    records of the sequential run (tests/conftest.py ``smoke_run``), recomputed: its engine
    cache starts without checkpoints and lm-eval results.

    Compared, record by record (every record of either run has its twin, none twice):
    the identity (variant, stage, task, workload, mode, load, metric, stat, concurrency,
    rate, lengths), unit, direction, backend and status; every value of the quantize stage
    (weight bytes and ratios exactly, checkpoint sizes to a few bytes, not its wall time),
    the accuracy stage (values, stderr, paired deltas, intervals, flips, McNemar p) and the
    quality stage (KL divergence, top-1 agreement, perplexity: one process over all variants
    in both runs; to 1e-9 relative, in case float reductions order differently). Latency
    values are measurements of two different moments: for them, only which are numbers and
    which are missing (NaN) must agree."""
    proc, seq_dir, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from smoke_study import smoke_config

    study = smoke_config(tmp_path)
    t0 = time.monotonic()
    proc = evalkit("run", str(study), "--run-id", "ray-1", "--cluster", "ray", "--no-progress",
                   env=fresh_cache(tmp_path))
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ray_dir = tmp_path / "outputs" / "smoke" / "ray-1"
    out = proc.stdout
    # the variants ran as Ray tasks, side by side, then the stages once over all variants
    for v in ("base", "w8a8_int8", "w4a8_fp8"):
        for stage in ("quantize", "accuracy", "latency"):
            assert re.search(rf"cluster: {v} {stage} ended on \S+ \(node ", out), (v, stage)
        for nb in ("01_quantize", "02_accuracy", "03_latency"):
            assert (ray_dir / "notebooks" / "variants" / v / f"{nb}.ipynb").is_file()
    log = (ray_dir / "logs" / "run.log").read_text()
    assert "cluster ray: 9 task(s) for 3 variant(s)" in log
    # two workers wrote the run at once: the quantize tasks of two variants overlapped
    spans = {}
    for v in ("base", "w8a8_int8", "w4a8_fp8"):
        start = re.search(rf"(\d\d:\d\d:\d\d) \[{v}\] stage 01_quantize: start", log)
        end = re.search(rf"(\d\d:\d\d:\d\d) \[{v}\] stage 01_quantize: done", log)
        spans[v] = (start.group(1), end.group(1))
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in
               ((spans["base"], spans["w8a8_int8"]), (spans["base"], spans["w4a8_fp8"]),
                (spans["w8a8_int8"], spans["w4a8_fp8"]))), spans
    # the pass over all variants measured nothing again (accuracy and points were done)
    tail = log[log.index("the stages now run over all variants"):]
    assert "already done in this run" in tail and "cached result reused" not in tail
    assert not re.search(r"latency: \S+/server/\S+: \d+ ok", tail)
    status = json.loads((ray_dir / "status.json").read_text())
    assert {s["state"] for s in status["stages"].values()} == {"done"}
    assert sorted(status["variants"]) == ["base", "w4a8_fp8", "w8a8_int8"]
    # every latency point names the node it ran on
    markers = [json.loads(p.read_text()) for p in (ray_dir / "units/latency").glob("*.json")]
    assert markers and all(m["node"]["ray_node_id"] and m["node"]["hostname"] for m in markers)
    env = json.loads((ray_dir / "env.json").read_text())
    workers = [a for a in env["attempts"] if a.get("variants")]
    assert {a["variants"][0] for a in workers} == {"base", "w8a8_int8", "w4a8_fp8"}
    assert all(a["ray_node_id"] for a in workers)
    assert (ray_dir / "report.html").is_file()

    seq, ray = _table(seq_dir), _table(ray_dir)
    assert list(ray.index) == list(seq.index)  # the same records, none more, none twice
    fixed = (seq["stage"].isin(["accuracy", "quality"])
             | ((seq["stage"] == "quantize") & ~seq["metric"].isin(WALL_TIMES)))
    a, b = seq.loc[fixed, "value"], ray.loc[fixed, "value"]
    assert fixed.sum() > 40
    tol = (1e-9 * a.abs()).where(seq.loc[fixed, "metric"] != "checkpoint_size_bytes",
                                 PROVENANCE_BYTES)
    same = (a.isna() & b.isna()) | (a == b) | ((a - b).abs() <= tol)
    assert same.all(), pd.DataFrame({"seq": a, "ray": b})[~same]
    lat = seq["stage"] == "latency"
    assert (seq.loc[lat, "value"].isna() == ray.loc[lat, "value"].isna()).all()
    assert not math.isnan(seconds)
    print(f"smoke study on local Ray: {seconds:.0f} s")


# ---------------------------------------------------------- a worker killed mid-variant

MARK = "EVALKIT_CLUSTER_MARK"


def _marked_engines(token: str) -> list[str]:
    """Live kernel or engine processes whose environment carries ``MARK=token``."""
    return marked_processes(MARK, token)


def _unit_names(run_dir: Path) -> list[str]:
    """The finished units of a run, as ``STAGE KEY`` with the key as its marker's file name
    spells it (``a/server/chat/c1/rinf`` -> ``a_server_chat_c1_rinf``, less the hash suffix)."""
    return sorted(f"{m.parent.name} {m.stem.rsplit('-', 1)[0]}"
                  for m in (run_dir / "units").glob("*/*.json"))


def _wait_for(what, check, proc: subprocess.Popen, out: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"run ended ({proc.returncode}) before {what}: "
                        f"{out.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}: {out.read_text()[-3000:]}")


@pytest.mark.slow
def test_worker_killed_mid_variant_then_resume(tmp_path, fault_table):
    """SIGKILL the Ray worker measuring variant ``a``'s latency once its first point is
    marked done: the driver says which task was lost (exit 4) while variant ``b`` finishes;
    the kernel and the vLLM server of the dead worker do not outlive it; ``--resume
    --cluster ray`` then measures exactly the unfinished point and ends the run, every unit
    done once and no record twice."""
    from tiny_model import build_tiny_llama

    t_start = time.monotonic()
    tiny = build_tiny_llama()
    study = tmp_path / "kill.yaml"
    study.write_text(yaml.safe_dump({
        "study": "kill", "model": {"source": "hf_dir", "path": str(tiny)},
        "variants": [{"name": "a", "scheme": "base"}, {"name": "b", "scheme": "base"}],
        # points of seconds (8 requests of 200 tokens), so the kill lands inside c2
        "latency": {"workloads": [{"name": "chat", "input_len": 16, "output_len": 200}],
                    "concurrency": [1, 2], "num_prompts": 8, "prompts_per_concurrency": 4,
                    "warmups": 0},
        "engine": {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 256,
                   "startup_timeout_s": 300},
        "output_root": str(tmp_path / "out")}, sort_keys=False))
    run_dir = tmp_path / "out" / "kill" / "k1"
    token = f"{os.getpid()}-{time.time_ns()}"
    out = tmp_path / "1.out"
    with open(out, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "evalkit.ui.cli", "run", str(study),
                              "--run-id", "k1", "--cluster", "ray", "--no-progress"],
                             stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                             env={**os.environ, MARK: token})

    def a_first_point_done():
        return "latency a_server_chat_c1_rinf" in _unit_names(run_dir)

    _wait_for("a's first latency point", a_first_point_done, p, out, 900)
    st = json.loads((run_dir / "status.json").read_text())["variants"]["a"]["latency"]
    assert st["state"] == "running"
    worker = int(st["pid"])
    os.kill(worker, signal.SIGKILL)
    t_kill = time.monotonic()
    assert p.wait(900) == 4, out.read_text()[-3000:]
    text = out.read_text()
    assert "cluster task(s) did not finish" in text and "a latency" in text
    assert "--resume k1 --cluster" in text
    # b was not held back by a's death
    assert re.search(r"cluster: b latency ended on ", text), text[-3000:]
    # nothing the dead worker started lives on (the raylet reaps its kernel and engine)
    deadline = time.monotonic() + 60
    while _marked_engines(token) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _marked_engines(token), _marked_engines(token)
    done_before = _unit_names(run_dir)
    assert {"latency a_server_chat_c1_rinf", "latency b_server_chat_c2_rinf",
            "quantize a", "quantize b"} <= set(done_before)
    assert "latency a_server_chat_c2_rinf" not in done_before
    mtimes = {q: q.stat().st_mtime_ns for q in (run_dir / "units").rglob("*.json")}

    proc = evalkit("run", str(study), "--resume", "k1", "--cluster", "ray", "--no-progress",
                   timeout=1200, env={MARK: token})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    log = (run_dir / "logs" / "run.log").read_text()
    # every unit done once: the finished ones kept untouched, only a's c2 measured again
    for marker, mtime in mtimes.items():
        assert marker.stat().st_mtime_ns == mtime, marker
    after = _unit_names(run_dir)
    assert sorted(set(after) - set(done_before)) == ["latency a_server_chat_c2_rinf"]
    assert len(after) == len(set(after))
    for v in ("a", "b"):
        for c in (1, 2):
            assert len(re.findall(rf"latency: {v}/server/chat/c{c}/rinf: \d+ ok", log)) == 1
    df = rec.load_runs(run_dir)
    keys = df[rec.KEY].astype("string").fillna("<NA>")
    assert not keys.duplicated().any()
    ok = df[(df["stage"] == "latency") & (df["mode"] == "server") & (df["status"] == "ok")
            & (df["metric"] == "ttft_ms") & (df["stat"] == "p50")]
    assert sorted(zip(ok["variant"], ok["concurrency"].astype(int), strict=True)) == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert (run_dir / "report.html").is_file()
    assert not _marked_engines(token)
    fault_table("(h) Ray worker SIGKILLed mid-variant (evalkit run --cluster ray)",
                "driver exit 4 naming the lost task and the resume command; the other "
                "variant finished; kernel and engine of the dead worker reaped; resume "
                "--cluster exit 0",
                "every finished unit (marker untouched); only the unfinished point measured "
                "again; no duplicate records",
                seconds=time.monotonic() - t_start)
    assert t_kill > t_start


def test_done_unsupported_points_keep_their_records_on_a_later_pass(tmp_path):
    """A cluster worker records a variant's latency as unsupported (no CPU kernel) and marks
    its points done; the pass over all variants after it (like any resume) must carry those
    records, not drop them."""
    from smoke_study import smoke_config

    from evalkit.core.run import create_run
    from evalkit.preflight import load_study
    from evalkit.stages import latency as lat

    study = smoke_config(tmp_path)
    cfg = load_study(study)
    run = create_run(cfg, study, "u1")
    share = cfg.model_copy(update={"variants": [cfg.variant("w4a8_fp8")]})
    first = lat.run_stage(share, run.scoped(["w4a8_fp8"])).records
    assert len(first) == 2 and set(first["status"]) == {"unsupported"}
    assert len(list((run.path / "units" / "latency").glob("*.json"))) == 2
    again = lat.run_stage(share, run).records
    cols = ["variant", "metric", "stat", "concurrency", "status", "note"]
    assert again[cols].equals(first[cols])
    assert {f.kind for f in lat.run_stage(share, run).failures} == {"unsupported"}


def test_points_from_several_nodes_are_named_in_the_report(tmp_path):
    """Each latency point's marker names its node; a run whose points come from two nodes
    gets a report caveat naming the nodes and their variants; one node, none."""
    from evalkit.analysis.load import node_caveat

    store = UnitStore(tmp_path)
    for variant, host, rid in (("a", "n1", "ab" * 28), ("b", "n2", "cd" * 28)):
        for c in (1, 2):
            store.mark(UnitKey.latency(variant, "server", "chat", c, math.inf),
                       {"records": "x", "status": "ok", "variant": variant,
                        "node": {"hostname": host, "ray_node_id": rid}})
    store.mark(UnitKey.latency("c", "server", "chat", 1, math.inf),
               {"records": "x", "status": "ok"})  # a run from before nodes were recorded
    nodes = store.unit_nodes("latency")
    assert nodes == {"n1 (Ray node abababababab...)": ["a"],
                     "n2 (Ray node cdcdcdcdcdcd...)": ["b"]}
    text = node_caveat(nodes)
    assert "measured on 2 nodes" in text and "n1 (Ray node abababababab...): a" in text
    assert node_caveat({"n1": ["a", "b"]}) is None


def test_archive_removes_the_write_locks(tmp_path):
    from smoke_study import smoke_config

    from evalkit.core.archive import archive_run
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study

    study = smoke_config(tmp_path)
    run = create_run(load_study(study), study, "a1")
    run.scoped(["base"]).log("a worker's line")  # takes locks/log.lock
    run.units.set_stage_state("quantize", "done", variant="base")  # locks/status.lock
    assert sorted(p.name for p in (run.path / "locks").iterdir()) == ["log.lock", "status.lock"]
    result = archive_run(run.path)
    assert {"locks/log.lock", "locks/status.lock"} <= set(result.removed)
    assert not (run.path / "locks").exists()
