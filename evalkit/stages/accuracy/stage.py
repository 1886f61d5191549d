"""The accuracy stage: every variant on every task, paired against base, records written (and
rebuilt from raw files).
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.assets.checkpoints import checkpoint_for
from evalkit.core import records as rec
from evalkit.core.config import StudyConfig
from evalkit.core.environment import env_hardware_label, hardware_label
from evalkit.core.errors import EngineError, EvalkitError, StageError, UnsupportedSchemeError
from evalkit.core.io import (
    json_exists,
    read_json,
)
from evalkit.core.run import Run, set_cpu_threads
from evalkit.core.specs import Variant
from evalkit.core.units import Failure, StageResult, UnitKey
from evalkit.stages.accuracy.backends import (
    hf_device,
    offline_env,
    plan_backend,
    prepare_tasks,
    task_manager,
)
from evalkit.stages.accuracy.results import (
    UnitResult,
    finished_unit,
    paired_records,
    unit_records,
    variant_fields,
)
from evalkit.stages.accuracy.runner import VariantRunner
from evalkit.stages.accuracy.server import BeforeClose
from evalkit.stages.accuracy.settings import STAGE, accuracy_spec, eval_settings, lm_eval_version


def run_stage(cfg: StudyConfig, run: Run, *, use_cache: bool = True,
              variants: Sequence[str] | None = None,
              before_close: BeforeClose | None = None) -> StageResult:
    """Evaluate every variant on every task, compare with base, write records.

    Args:
        cfg: the study.
        run: the run directory (raw files, unit markers, logs, records).
        use_cache: reuse (and fill) the cross-run cache under ``cache_dir()/accuracy``.
            Within-run unit markers are always honoured.
        variants: restrict to these variant names (default: all). The base variant is
            always evaluated too, since the paired statistics need it.
        before_close: called with a variant's live
            :class:`~evalkit.stages.serving.VariantSession` before its vLLM server is stopped
            (the notebook passes the latency stage's ``measure_on``, so a variant costs one
            engine start for both stages); an :class:`EvalkitError` it raises is logged.

    Returns:
        The stage's records (also written to ``records/accuracy.parquet``) and the
        (variant, task) units that failed (``status="failed"`` in the records; nothing is
        raised for them: the caller calls ``raise_for_failures``).

    Raises:
        StageError: unknown ``variants``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415


    acc_spec = accuracy_spec(cfg)
    if cfg.engine.device == "cpu" and any(
            plan_backend(variant, "cpu").backend == "hf" for variant in cfg.variants):

        set_cpu_threads(run, "accuracy")
    chosen = list(cfg.variants)
    if variants is not None:
        unknown = sorted(set(variants) - {variant.name for variant in cfg.variants})
        if unknown:
            raise StageError(f"accuracy: unknown variants {unknown}; study has "
                             f"{[variant.name for variant in cfg.variants]}")
        base_v = cfg.base_variant
        keep = set(variants) | ({base_v.name} if base_v else set())
        chosen = [variant for variant in cfg.variants if variant.name in keep]
    model_name = assets.resolve_model(cfg.model).name
    hardware_vllm = hardware_label(cfg.engine.device)
    hardware_hf = hardware_label(hf_device(cfg))
    tasks = [(task, taskpack.lm_eval_task_name(task, acc_spec.data)) for task in acc_spec.tasks]
    run.log(f"accuracy: {len(chosen)} variants x {len(tasks)} tasks, settings "
            f"{json.dumps(eval_settings(cfg), sort_keys=True)}, lm-eval {lm_eval_version()}")

    results: dict[tuple[str, str], UnitResult] = {}
    failures: dict[tuple[str, str], str] = {}
    with offline_env():
        # lm-eval's task index (seconds: it reads every task YAML) is built once, while the
        # first group's servers start; a group without a server builds it before evaluating
        tm = None
        bar = tqdm(total=len(chosen) * len(tasks), desc="accuracy", unit="task")
        group_size = cfg.engine.parallel_starts
        try:
            for i in range(0, len(chosen), group_size):
                runners: list[VariantRunner] = []
                for variant in chosen[i:i + group_size]:
                    try:
                        ckpt = Path(checkpoint_for(run, variant.name))
                    except EvalkitError as exc:
                        for task, _ in tasks:
                            failures[(variant.name, task)] = f"no checkpoint: {exc}"
                        run.log(f"accuracy {variant.name}: FAILED, no checkpoint: {exc}")
                        bar.update(len(tasks))
                        continue
                    runners.append(VariantRunner(cfg, run, variant, ckpt, use_cache, bar,
                                                  before_close))
                try:
                    launched = [runner.variant.name for runner in runners if runner.launch(tasks)]
                    together = acc_spec.concurrent_servers and len(launched) > 1
                    if len(launched) > 1:
                        run.log("accuracy: vLLM servers of " + ", ".join(launched)
                                + " start side by side; "
                                + ("evaluated together, latency points one server at a time"
                                   if together else "each is used alone"))
                    if together:  # each lm-eval process starts and builds its model meanwhile
                        for runner in runners:
                            runner.start_worker()
                    if tm is None:  # meanwhile, what needs no server
                        tm = task_manager(acc_spec.data)
                    for runner in runners:
                        runner.tm = tm
                        runner.prepare()
                    if together:
                        _evaluate_concurrently(runners, tasks, results, failures, bar)
                    for j, runner in enumerate(runners):
                        if not together:
                            _evaluate_variant(runner, tasks, results, failures, bar)
                        # before_close runs with the group's other servers up and idle
                        runner.close(beside=[other.variant.name for other in runners[j + 1:]
                                             if other.settle()])
                finally:
                    for runner in runners:  # an interrupt: stop every server of the group
                        runner.stop_worker(wait=False)
                        runner.close_quietly()
        finally:
            bar.close()

    df = _stage_records(cfg, run, chosen, tasks, results, failures, model_name,
                        {"vllm": hardware_vllm, "hf": hardware_hf})
    run.write_stage_records(STAGE, df)
    return StageResult(STAGE, df, [
        Failure(UnitKey.accuracy(variant_name, task), "failed", why.split("\n")[0])
        for (variant_name, task), why in failures.items()])


def _evaluate_concurrently(runners: Sequence[VariantRunner], tasks: Sequence[tuple[str, str]],
                           results: dict[tuple[str, str], UnitResult],
                           failures: dict[tuple[str, str], str], bar: Any) -> None:
    """All tasks of a group's variants at the same time, one thread per variant, each with
    lm-eval in a process of its own (:class:`LmEvalWorker`) against its own server
    (``accuracy.concurrent_servers``). Returns when every variant is done; an interrupt
    leaves the lm-eval processes to fail against the servers the caller stops."""
    run = runners[0].run
    try:
        prepare_tasks(runners[0].tm, [lm_task for _, lm_task in tasks])
    except Exception as exc:  # noqa: BLE001 -- each task then reports its own failure
        run.log(f"accuracy: the tasks' data could not be prepared ahead "
                f"({type(exc).__name__}: {exc}); each task reports it")
    run.log(f"accuracy: {', '.join(runner.variant.name for runner in runners)} evaluated at "
            "the same time, each against its own server from an lm-eval process of its own")

    def work(runner: VariantRunner) -> None:
        run.log(f"accuracy {runner.variant.name}: {len(tasks)} tasks started")
        _evaluate_variant(runner, tasks, results, failures, bar)

    # one thread per variant waits on its server and on its lm-eval process (LmEvalWorker,
    # started by the caller: lm-eval's client work in threads of one process would share one
    # interpreter lock)
    pool = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix="accuracy")
    finished = False
    try:
        futures = [pool.submit(work, runner) for runner in runners]
        for future in futures:
            future.result()
        finished = True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for runner in runners:  # done: the processes end before the latency points
            runner.stop_worker(wait=finished)


def _evaluate_variant(runner: VariantRunner, tasks: Sequence[tuple[str, str]],
                      results: dict[tuple[str, str], UnitResult],
                      failures: dict[tuple[str, str], str], bar: Any) -> None:
    """All tasks of one variant; a failed task is recorded and the next one runs, a failed
    backend (engine or model load) fails the variant's remaining tasks."""
    name, run = runner.variant.name, runner.run
    try:
        for t, lm_task in tasks:
            bar.set_postfix_str(f"{name}/{t}")
            try:
                results[(name, t)] = runner.evaluate(t, lm_task)
            except (EngineError, UnsupportedSchemeError):
                raise  # the backend itself is unusable: stop this variant
            except Exception as exc:  # noqa: BLE001 -- a failed unit is data
                failures[(name, t)] = f"{type(exc).__name__}: {exc}"
                run.log(f"accuracy {name}/{t}: FAILED {type(exc).__name__}: "
                        f"{exc}\n{traceback.format_exc()}")
            bar.update(1)
    except Exception as exc:  # noqa: BLE001 -- engine/model load failed
        for t, _ in tasks:
            if (name, t) not in results and (name, t) not in failures:
                failures[(name, t)] = f"{type(exc).__name__}: {exc}".split("\n")[0]
                bar.update(1)
        run.log(f"accuracy {name}: FAILED {type(exc).__name__}: {exc}\n"
                f"{traceback.format_exc()}")


def _stage_records(cfg: StudyConfig, run: Run, chosen: Sequence[Variant],
                   tasks: Sequence[tuple[str, str]], results: Mapping[tuple[str, str], UnitResult],
                   failures: dict[tuple[str, str], str], model_name: str,
                   hardware: Mapping[str, str]) -> pd.DataFrame:
    """The stage's records: each unit's values, paired deltas vs base, failed units (NaN).
    ``hardware``: label per backend (``vllm``, ``hf``); paired-statistics failures are added
    to ``failures``."""
    rows: list[dict[str, Any]] = []
    base_v = cfg.base_variant
    vmap = {v.name: v for v in chosen}
    for (vname, t), u in results.items():
        hw = hardware["vllm" if u.backend == "vllm" else "hf"]
        lm_task = dict(tasks)[t]
        rows += [{**variant_fields(cfg, vmap[vname]), **r} for r in unit_records(u, lm_task, hw)]
        if base_v is None or vname == base_v.name:
            continue
        bu = results.get((base_v.name, t))
        if bu is None:
            continue
        try:
            rows += [{**variant_fields(cfg, vmap[vname]), **r}
                     for r in paired_records(bu, u, lm_task, cfg, hw)]
        except EvalkitError as exc:
            failures[(vname, f"{t} (paired)")] = str(exc)
            run.log(f"accuracy {vname}/{t}: paired statistics FAILED: {exc}")
    for (vname, t), why in failures.items():
        # A failed comparison keeps the variant's own (ok) values and fails its "delta".
        paired = t.endswith(" (paired)")
        task = t.removesuffix(" (paired)")
        known = sorted({r["metric"] for r in rows if r["task"] == task}) or ["evaluation"]
        for metric in known:
            rows.append({**variant_fields(cfg, vmap[vname]), "task": task, "metric": metric,
                         "stat": "delta" if paired else "value", "value": math.nan,
                         "unit": "fraction", "status": "failed",
                         "note": why.split("\n")[0][:500], "hardware": hardware["vllm"]})
    return rec.make_records(rows, run_id=run.run_id, study=cfg.study, model=model_name,
                            stage=STAGE)


def rebuild_records(run: Run) -> pd.DataFrame:
    """Assemble the stage records of a run from its finished (variant, task) units.

    An interrupted accuracy stage writes no stage records; every finished unit keeps its
    lm-eval results and per-document scores under ``raw/accuracy``. This builds the records
    (values, stderr, paired deltas vs base) from them, without any model, with the hardware
    of the machine that ran them (``env.json``). Units not finished are absent ("not
    measured"). Writes and returns the stage records.
    """

    cfg = run.config()
    acc_spec = accuracy_spec(cfg)
    tasks = [(t, taskpack.lm_eval_task_name(t, acc_spec.data)) for t in acc_spec.tasks]
    results: dict[tuple[str, str], UnitResult] = {}
    for v in cfg.variants:
        for t, _ in tasks:
            done = run.units.done(UnitKey.accuracy(v.name, t))
            raw = run.path / "raw" / STAGE / v.name / t
            if done is None or not json_exists(raw / "results.json"):
                continue
            results[(v.name, t)] = finished_unit(v.name, t, raw, done)
    if not results:
        raise StageError(f"{run.path}: no finished accuracy units to rebuild records from")
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    q = run.records()
    names = q.loc[q["stage"] == "quantize", "model"].dropna() if not q.empty else q
    model_name = str(names.iloc[0]) if len(names) else str(cfg.model.name or cfg.model.path)
    hardware = {"vllm": env_hardware_label(env, cfg.engine.device),
                "hf": env_hardware_label(env, hf_device(cfg))}
    failures: dict[tuple[str, str], str] = {}
    df = _stage_records(cfg, run, cfg.variants, tasks, results, failures, model_name, hardware)
    run.write_stage_records(STAGE, df)
    run.log(f"accuracy: {len(results)} finished unit(s) assembled into {len(df)} records")
    return df


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display table of accuracy records: one row per task x metric x non-base variant.

    Columns: ``task``, ``metric``, ``variant``, ``base`` ("value ± stderr"), ``base_value``,
    ``base_stderr``, ``value``, ``delta``, ``ci_low``, ``ci_high``, ``delta_ci`` (display),
    ``recovery_pct``, ``p_value``, ``significant`` (the interval excludes 0), ``n``,
    ``backend``. Pure: takes records, returns a new frame; base-only studies give one row
    per task x metric with the variant columns empty.
    """
    d = df[(df["stage"] == STAGE) & (df["status"] == "ok")]
    cols = ["task", "metric", "variant", "base", "base_value", "base_stderr", "value",
            "delta", "ci_low", "ci_high", "delta_ci", "recovery_pct", "p_value",
            "significant", "n", "backend"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    wide = d.pivot_table(index=["task", "metric", "variant"], columns="stat", values="value",
                         aggfunc="last")
    meta = d.groupby(["task", "metric", "variant"]).agg(
        n=("n", "max"), backend=("backend", "last"), scheme=("scheme", "last"))
    wide = wide.join(meta).reset_index()
    base_names = set(wide.loc[wide["scheme"] == "base", "variant"])
    base = wide[wide["variant"].isin(base_names)]
    others = wide[~wide["variant"].isin(base_names)]
    b = base[["task", "metric", "value", "stderr"]].rename(
        columns={"value": "base_value", "stderr": "base_stderr"})
    out = (others.merge(b, on=["task", "metric"], how="left") if len(others)
           else b.assign(variant=pd.NA, value=np.nan))
    for c in ("delta", "ci_low", "ci_high", "recovery_pct", "p_value", "n", "backend"):
        if c not in out:
            out[c] = np.nan
    out["base"] = [
        "" if pd.isna(v) else f"{v:.4f} ± {s:.4f}" if not pd.isna(s) else f"{v:.4f}"
        for v, s in zip(out["base_value"], out["base_stderr"], strict=True)
    ]
    out["delta_ci"] = [
        "" if pd.isna(dl) else (f"{dl:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                                if not (pd.isna(lo) or pd.isna(hi)) else f"{dl:+.4f}")
        for dl, lo, hi in zip(out["delta"], out["ci_low"], out["ci_high"], strict=True)
    ]
    out["significant"] = [
        pd.NA if (pd.isna(lo) or pd.isna(hi)) else bool(lo > 0 or hi < 0)
        for lo, hi in zip(out["ci_low"], out["ci_high"], strict=True)
    ]
    out["significant"] = out["significant"].astype("boolean")
    return out[cols].sort_values(["task", "metric", "variant"], ignore_index=True)
