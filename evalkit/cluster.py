"""Run a study's variants on a Ray cluster: ``evalkit run STUDY --cluster ray[:ADDRESS]``.

Why this exists: one machine runs a study's variants one after another; a cluster runs them
side by side, each on the GPUs it needs, while the run directory stays the one truth (unit
markers, atomic writes, locks and resume work as they do on one machine).

Per variant, one Ray task per stage, each executing that variant's share of the stage's
notebook (``variants=[name]``, see :func:`evalkit.ui.cells.stage.open_stage`) into the run
directory, each after the variant's previous stage (:func:`stage_options`):

* **quantize**, then **accuracy**: with ``num_gpus = tensor_parallel_size x
  pipeline_parallel_size`` of the study's engine, on any node (on a CPU engine, quantize
  takes one CPU and accuracy a node's worth of CPUs);
* **latency**: where the study's latency may run (:func:`latency_options`): on a GPU engine,
  on nodes of one accelerator type (Ray's ``accelerator_type`` resource;
  ``--accelerator-type`` picks one when the cluster has several) or on one node for all
  latency (``--latency-node``); on a CPU engine, on one node (the driver's unless named) and
  holding all of its CPUs, so no other work shares the cores while a point is measured.

The runner then executes the stages once more over all variants: they find every unit done,
join the records (paired deltas against base), run the quality step (every variant against
base, in one process) and the report. A worker that dies loses only the unit it was in: its
kernels mark nothing after it is gone (:data:`evalkit.core.units.WORKER_PID_ENV`), the local
Ray instance kills what they started (the raylet is their subreaper), and ``--resume`` with
``--cluster`` runs exactly the unfinished units.

Ray is imported only when a cluster is asked for. This module sits beside the runner and
below it: the runner hands it the function that executes one stage.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evalkit.core.config import StudyConfig
from evalkit.core.environment import RAY_NODE_ENV
from evalkit.core.errors import ClusterError, StageError
from evalkit.core.run import Run, open_run
from evalkit.core.units import WORKER_PID_ENV

#: the stages that run per variant, each a task; the report runs once over all variants
VARIANT_STAGES = ("quantize", "accuracy", "latency")
LATENCY_STAGE = "latency"

#: the Ray release evalkit is tested with (the ``cluster`` extra pins it)
RAY_PIN = "ray==2.60.0"

#: the local Ray instance makes its raylet the subreaper of the workers' children: a killed
#: worker's notebook kernels (and the engines they started) are killed with it
_LOCAL_SYSTEM_CONFIG = {"kill_child_processes_on_worker_exit_with_raylet_subreaper": True}


@dataclass(frozen=True)
class ClusterSpec:
    """Where the variants run: ``ray`` (a local Ray instance started for the run) or
    ``ray:ADDRESS`` (an existing cluster: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""

    kind: str
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """Read ``--cluster``'s value.

        Raises:
            ClusterError: not ``ray`` or ``ray:ADDRESS``.
        """
        kind, sep, address = text.partition(":")
        if kind != "ray" or (sep and not address.strip()):
            raise ClusterError(f"--cluster {text!r}: allowed are 'ray' (a local Ray instance) "
                               "and 'ray:ADDRESS' (an existing Ray cluster: auto, HOST:PORT "
                               "or ray://HOST:PORT)")
        return cls("ray", address.strip() or None)

    def __str__(self) -> str:
        return self.kind + (f":{self.address}" if self.address else "")


@dataclass(frozen=True)
class Placement:
    """Where latency may run: ``latency_node`` (a Ray node id, IP or host name) pins every
    latency task to that node; ``accelerator_type`` (as Ray names it, e.g. ``H100``) picks
    the type when the cluster has several."""

    latency_node: str | None = None
    accelerator_type: str | None = None


def variant_gpus(cfg: StudyConfig) -> int:
    """GPUs one variant's engine uses: ``tensor_parallel_size x pipeline_parallel_size``
    (:attr:`~evalkit.core.specs.EngineSpec.gpus_per_engine`); 0 on a CPU engine."""
    engine = cfg.engine
    return 0 if engine.device == "cpu" else int(engine.gpus_per_engine)


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ClusterError: Ray is not installed in this environment.
    """
    try:
        import ray  # noqa: PLC0415 -- only a cluster run needs it
    except ImportError:
        raise ClusterError(
            "--cluster ray needs the Python package 'ray' in the environment that runs evalkit "
            f"(pip install '{RAY_PIN}', or the project's 'cluster' extra: "
            "pip install -e '.[cluster]')") from None
    return ray


def connect(spec: ClusterSpec) -> tuple[Any, bool]:
    """Connect to the cluster (start a local Ray instance for ``ray``).

    Returns:
        The ``ray`` module and whether this call started Ray (then the caller shuts it down).

    Raises:
        ClusterError: Ray is missing, or no cluster answers at the address.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    try:
        if spec.address is None:
            ray.init(include_dashboard=False, object_store_memory=256 * 2**20,
                     _system_config=_LOCAL_SYSTEM_CONFIG)
        else:
            ray.init(address=spec.address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"--cluster {spec}: cannot connect to Ray ({exc})") from None
    return ray, True


def _alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _find_node(nodes: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    for n in nodes:
        if name in (n.get("NodeID"), n.get("NodeManagerAddress"), n.get("NodeManagerHostname")):
            return n
    known = [f"{n.get('NodeManagerHostname')} ({n.get('NodeManagerAddress')}, "
             f"{str(n.get('NodeID'))[:12]}...)" for n in nodes]
    raise ClusterError(f"--latency-node {name!r}: no live node of that id, IP or host name; "
                       f"nodes: {known}")


def latency_options(ray: Any, cfg: StudyConfig, placement: Placement) -> dict[str, Any]:
    """The Ray options of every latency task of the study: where its points may be measured
    so that they compare with each other.

    Raises:
        ClusterError: the cluster has several accelerator types and none was chosen, the
            chosen type or node is not in the cluster, or a CPU node has no CPU resource.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

    nodes = _alive_nodes(ray)
    gpus = variant_gpus(cfg)
    node = _find_node(nodes, placement.latency_node) if placement.latency_node else None
    if gpus == 0:
        # a CPU engine measures on the cores it shares with everything else on the node: one
        # node for every point, and the whole node while a point is measured
        if node is None:
            here = ray.get_runtime_context().get_node_id()
            node = next((n for n in nodes if n["NodeID"] == here), None) or _find_node(nodes, here)
        cpus = float(node.get("Resources", {}).get("CPU", 0))
        if cpus < 1:
            raise ClusterError(f"latency on a CPU engine needs a node with CPUs; node "
                               f"{node.get('NodeManagerHostname')} has none in Ray (pass "
                               "--latency-node)")
        return {"num_cpus": cpus, "num_gpus": 0,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
    opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus}
    if node is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        return opts
    types = sorted({k.split(":", 1)[1] for n in nodes for k in n.get("Resources", {})
                    if k.startswith("accelerator_type:")})
    if placement.accelerator_type:
        if placement.accelerator_type not in types:
            raise ClusterError(f"--accelerator-type {placement.accelerator_type!r}: not in this "
                               f"cluster; its nodes have {types or 'no accelerator type'}")
        opts["accelerator_type"] = placement.accelerator_type
    elif len(types) > 1:
        raise ClusterError(f"the cluster has nodes of accelerator types {types}: latency points "
                           "of one study must come from one type; choose one with "
                           "--accelerator-type, or one node with --latency-node")
    elif types:
        opts["accelerator_type"] = types[0]
    return opts


def check_fits(ray: Any, cfg: StudyConfig) -> None:
    """Refuse what a variant task cannot do on this cluster, before any task is submitted.

    Raises:
        ClusterError: no node has the GPUs one variant's engine needs (a task runs on one
            node; Ray would keep it pending for ever), or the engine would start Ray
            workers of its own (``engine.executor: ray``) for GPUs its task already
            holds.
    """
    gpus = variant_gpus(cfg)
    most = max((float(n.get("Resources", {}).get("GPU", 0)) for n in _alive_nodes(ray)),
               default=0.0)
    if gpus > most:
        raise ClusterError(f"a variant's engine needs {gpus} GPUs (tensor_parallel_size x "
                           f"pipeline_parallel_size) on one node; the largest node of this "
                           f"cluster has {most:g}")
    if gpus and cfg.engine.executor == "ray":
        raise ClusterError("engine.executor: ray under --cluster: the variant's task already "
                           "holds its GPUs, and vLLM's Ray executor would ask the cluster for "
                           "them again; allowed with --cluster: executor auto or mp (one node "
                           "per engine)")


def run_share(run_path: str, variant: str, stage: Any, execute: Callable[..., Any],
              after: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of a Ray task: execute ``stage`` for ``variant`` into the run directory.

    ``after`` is the result of the variant's previous stage (Ray passes it once that task
    has finished). When that stage failed without writing its records (nothing to build
    on), this one is skipped, as the runner skips later stages on one machine; a stage that
    failed in some units only is reported and the next one runs on what it finished.

    Returns:
        ``{"variant", "hostname", "node_id", "seconds", "errors", "stopped"}``.
    """
    import ray  # noqa: PLC0415 -- runs inside a Ray worker

    t0 = time.monotonic()
    node_id = ray.get_runtime_context().get_node_id()
    result = {"variant": variant, "hostname": platform.node(), "node_id": node_id,
              "errors": [], "stopped": bool(after and after.get("stopped"))}
    if not result["stopped"]:
        # the notebook kernels inherit these: the node each unit ran on, and the worker whose
        # death must stop them from marking units done
        os.environ[RAY_NODE_ENV] = node_id
        os.environ[WORKER_PID_ENV] = str(os.getpid())
        run = open_run(run_path)
        try:
            execute(run, stage, progress=False, variants=[variant])
        except StageError as exc:
            result["errors"] = [str(exc)]
            result["stopped"] = not run.scoped([variant]).stage_records_path(stage.name).is_file()
    result["seconds"] = time.monotonic() - t0
    return result


def stage_options(ray: Any, cfg: StudyConfig, placement: Placement,
                  stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The Ray resources of each stage's task of a variant.

    quantize: 1 CPU and the variant's GPUs. accuracy: the same on a GPU engine; on a CPU
    engine a node's worth of CPUs (the smallest node's count), since vLLM's CPU backend and
    torch use every core and the study's memory settings (``gpu_memory_utilization`` is a
    share of RAM there) are sized for one engine per machine. latency:
    :func:`latency_options`.

    Raises:
        ClusterError: as :func:`latency_options`.
    """
    gpus = variant_gpus(cfg)
    out: dict[str, dict[str, Any]] = {"quantize": {"num_cpus": 1, "num_gpus": gpus}}
    if gpus:
        out["accuracy"] = {"num_cpus": 1, "num_gpus": gpus}
    else:
        cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in _alive_nodes(ray)]
        out["accuracy"] = {"num_cpus": min((c for c in cpus if c >= 1), default=1.0),
                           "num_gpus": 0}
    if LATENCY_STAGE in stages:
        out[LATENCY_STAGE] = latency_options(ray, cfg, placement)
    return out


def run_variants(run: Run, cfg: StudyConfig, stages: Sequence[Any], execute: Callable[..., Any],
                 spec: ClusterSpec, placement: Placement = Placement(), *,
                 progress: bool = True) -> list[str]:
    """Run each variant's share of ``stages`` (quantize, accuracy, latency; as
    :class:`evalkit.runner.Stage`) as Ray tasks, one per variant and stage, each after the
    variant's previous one; return when all have ended.

    Args:
        run: the run directory (on a filesystem every node mounts at the same path).
        cfg: the study.
        stages: the stages to run per variant, in order.
        execute: ``execute(run, stage, progress=..., variants=[name])`` runs one stage's
            notebook for one variant (:func:`evalkit.runner.execute_stage`).
        spec: the cluster.
        placement: where latency may run.
        progress: a progress bar of finished tasks (log lines are written either way).

    Returns:
        The stage failures the workers reported (units that failed are data in the parts'
        records; the pass over all variants runs them again, as a resume would).

    Raises:
        StageError: a task's worker died (or Ray lost the task): finished units are kept.
        ClusterError: the cluster cannot be reached or cannot place the study's latency.
        KeyboardInterrupt: the driver was stopped; every unfinished task is cancelled.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    ray, started = connect(spec)
    try:
        gpus = variant_gpus(cfg)
        check_fits(ray, cfg)
        options = stage_options(ray, cfg, placement, [s.name for s in stages])
        task = ray.remote(run_share)
        tasks: dict[Any, tuple[str, str]] = {}
        for v in cfg.variants:
            prev = None  # each stage of a variant waits for the one before it
            for stage in stages:
                prev = task.options(**options[stage.name], max_retries=0,
                                    name=f"evalkit {v.name} {stage.name}",
                                    ).remote(str(run.path), v.name, stage, execute, prev)
                tasks[prev] = (v.name, stage.name)
        lat_opts = options.get(LATENCY_STAGE, {})
        where = {k: v for k, v in lat_opts.items() if k != "scheduling_strategy"}
        if "scheduling_strategy" in lat_opts:
            where["node"] = lat_opts["scheduling_strategy"].node_id
        run.log(f"cluster {spec}: {len(tasks)} task(s) for {len(cfg.variants)} variant(s); "
                f"{gpus} GPU(s) per variant; latency tasks: {where or 'none'}; "
                f"cluster resources {ray.cluster_resources()}")
        return _wait(ray, run, tasks, progress, tqdm)
    finally:
        if started:
            ray.shutdown()


def _wait(ray: Any, run: Run, tasks: dict[Any, tuple[str, str]], progress: bool,
          tqdm: Any) -> list[str]:
    """Wait for every task, logging each end and each change of the workers' stage states."""
    pending = list(tasks)
    errors: list[str] = []
    lost: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    _log_states(run, seen, quiet=True)  # a resumed run's earlier states are not news
    bar = tqdm(total=len(tasks), desc="variant tasks", unit="task", disable=not progress)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=5.0)
            _log_states(run, seen)
            for ref in ready:
                name, what = tasks[ref]
                bar.update(1)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    lost.append(f"{name} {what}: {type(exc).__name__}: {first}")
                    run.log(f"cluster: {name} {what} LOST: {type(exc).__name__}: {first}")
                    continue
                errors += res["errors"]
                if res["stopped"] and not res["errors"]:
                    run.log(f"cluster: {name} {what} skipped (an earlier stage of {name} "
                            "wrote no records)")
                    continue
                run.log(f"cluster: {name} {what} ended on {res['hostname']} (node "
                        f"{res['node_id'][:12]}) in {res['seconds']:.0f} s"
                        + (" (FAILED)" if res["errors"] else ""))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    if lost:
        raise StageError(f"{len(lost)} cluster task(s) did not finish; finished units are "
                         f"kept -- `evalkit run STUDY --resume {run.run_id} --cluster ...` runs "
                         "the rest: " + "; ".join(lost))
    return errors


def _log_states(run: Run, seen: dict[tuple[str, str], str], *, quiet: bool = False) -> None:
    """Log each worker stage state that changed since the last call (status.json); ``quiet``:
    only remember them."""
    try:
        states = run.units.variant_states()
    except (OSError, ValueError):
        return  # status.json is replaced atomically; a read error is transient
    for variant, by_stage in sorted(states.items()):
        for stage, st in sorted(by_stage.items(), key=lambda kv: str(kv[1].get("time_utc"))):
            state = str(st.get("state"))
            if seen.get((variant, stage)) != state:
                seen[(variant, stage)] = state
                if quiet:
                    continue
                extra = f" ({st['seconds']} s)" if "seconds" in st else ""
                run.log(f"cluster: {variant} {stage} {state}{extra}")
