"""Execute a study: the four notebooks, in order, each in its own Jupyter kernel.

papermill injects two parameters into each notebook (``config_path``, ``run_dir``), runs
it in the kernel named in the notebook's metadata (quantize for 01, eval for the rest),
and saves the executed notebook into the run directory after every cell, so a failure
leaves the error visible in the saved notebook. Each executed notebook is rendered to
HTML twice: a stakeholder copy without code and a full copy with code.

With ``cluster`` (``evalkit run --cluster ray[:ADDRESS]``), each variant's quantize,
accuracy and latency notebooks first run as Ray tasks (:mod:`evalkit.cluster`), writing
into ``notebooks/variants/VARIANT/``; the stages then run here once over all variants, find
the units done and join the records, and the report follows.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from evalkit import cluster as cl
from evalkit.analysis.index import write_index
from evalkit.core.config import StudyConfig, read_study
from evalkit.core.errors import Interrupted, RunDirError, StageError
from evalkit.core.io import atomic_write_text, file_lock
from evalkit.core.notebooks import (
    NOTEBOOK_DIR,
    NotebookFailed,
    execute_notebook,
    interrupt_kernels,
    notebook_kernel,
    render_html,
)
from evalkit.core.run import REPORT_HTML, Run, create_run, open_run
from evalkit.preflight import load_study


@dataclass(frozen=True)
class Stage:
    notebook: str
    name: str
    kernel: str


STAGES: tuple[Stage, ...] = (
    Stage("01_quantize", "quantize", "evalkit-quantize"),
    Stage("02_accuracy", "accuracy", "evalkit-eval"),
    Stage("03_latency", "latency", "evalkit-eval"),
    Stage("04_report", "report", "evalkit-eval"),
)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


@contextmanager
def _signals_as_interrupt(run: Run) -> Iterator[None]:
    """SIGINT and SIGTERM: tell the kernels to mark no further unit done, interrupt the
    running kernel at once (its cell stops in the unit it is in; finished units stay marked),
    then KeyboardInterrupt here, so papermill shuts the kernel down and the run records the
    stage as interrupted."""

    def handler(signum: int, _frame: object) -> None:
        try:
            run.units.request_stop(f"signal {signum}")
        except (OSError, RunDirError):
            pass  # a run directory that cannot be written: the interrupt alone must do
        interrupt_kernels()
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def execute_stage(run: Run, stage: Stage, *, progress: bool = True,
                  variants: Sequence[str] | None = None) -> Path:
    """Run one stage's notebook with papermill into the run directory.

    Args:
        run: the run.
        stage: the stage.
        progress: papermill's progress bar.
        variants: only these variants (a cluster worker's share): the notebook goes to
            ``notebooks/variants/NAME/``, the state to ``status.json["variants"]``, and it is
            rendered to HTML (under ``html/variants/NAME/``) only when it fails; None: all.

    Raises:
        StageError: a cell raised; the executed notebook (saved) shows the error.
    """
    src = NOTEBOOK_DIR / f"{stage.notebook}.ipynb"
    share = "+".join(variants) if variants else None
    parameters: dict[str, object] = {"config_path": str(run.config_path), "run_dir": str(run.path)}
    if share:
        parameters["variants"] = list(variants or ())
        out = run.sub("notebooks", "variants", share, f"{stage.notebook}.ipynb")
        html_dir = run.path / "html" / "variants" / share
        run = run.scoped(variants)
    else:
        out = run.sub("notebooks", f"{stage.notebook}.ipynb")
        html_dir = run.path / "html"
    kernel = notebook_kernel(src)
    t0 = time.monotonic()
    run.units.set_stage_state(stage.name, "running", variant=share, kernel=kernel,
                              pid=os.getpid())
    run.log(f"stage {stage.notebook}: start (kernel {kernel})")
    try:
        execute_notebook(src, out, parameters=parameters, progress=progress,
                         save_every_cell=True, cwd=run.path)
    except NotebookFailed as exc:
        dt = time.monotonic() - t0
        run.units.set_stage_state(stage.name, "failed", variant=share, seconds=round(dt, 1),
                                  error=exc.ename)
        _render_quietly(out, run, html_dir)
        run.log(f"stage {stage.notebook}: FAILED after {dt:.0f}s: {exc.ename}: {exc.evalue}")
        raise StageError(
            f"stage {stage.notebook}{f' ({share})' if share else ''} failed in cell "
            f"{exc.exec_count}: {exc.ename}: "
            f"{exc.evalue.splitlines()[0] if exc.evalue else ''} -- see {out}"
        ) from None
    except KeyboardInterrupt:
        dt = time.monotonic() - t0
        run.units.set_stage_state(stage.name, "interrupted", variant=share, seconds=round(dt, 1))
        _render_quietly(out, run, html_dir)
        run.log(f"stage {stage.notebook}: interrupted after {dt:.0f}s")
        raise
    dt = time.monotonic() - t0
    if not share:
        render_html(out, html_dir)
    run.units.set_stage_state(stage.name, "done", variant=share, seconds=round(dt, 1),
                              kernel=kernel)
    run.log(f"stage {stage.notebook}: done in {dt:.0f}s")
    return out


def _render_quietly(notebook: Path, run: Run, html_dir: Path) -> None:
    """Render what a failed or interrupted stage left; a render error must not hide the cause."""
    if not notebook.is_file():
        return
    try:
        render_html(notebook, html_dir)
    except Exception as exc:  # noqa: BLE001 -- secondary failure; the stage error is reported
        run.log(f"could not render {notebook.name}: {exc}")


def run_study(
    config_path: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    stages: Sequence[str] | None = None,
    progress: bool = True,
    cluster: str | None = None,
    latency_node: str | None = None,
    accelerator_type: str | None = None,
) -> Run:
    """Validate a study and execute its notebooks into a run directory.

    Args:
        config_path: the study YAML.
        run_id: id for a new run (default: time-based, unique).
        resume: id or path of an existing run of this study to continue; finished units are
            kept and skipped.
        stages: subset of stage names to run (default all, in order).
        progress: show progress bars.
        cluster: ``"ray"`` (a local Ray instance) or ``"ray:ADDRESS"`` (an existing Ray
            cluster): each variant's quantize, accuracy and latency stages run as Ray tasks
            (:mod:`evalkit.cluster`) before the stages run here over all variants; the run
            directory must be on a filesystem every node mounts at the same path. None: one
            machine, stage after stage.
        latency_node: with ``cluster``, the node (Ray node id, IP or host name) every latency
            task runs on.
        accelerator_type: with ``cluster``, the accelerator type (Ray's name, e.g. ``H100``)
            latency runs on, where the cluster has several.

    Returns:
        The run.

    Raises:
        ConfigError, RunDirError, StageError, ClusterError, Interrupted.
    """
    cfg = load_study(config_path)
    wanted = list(stages) if stages else stage_names()
    unknown = set(wanted) - set(stage_names())
    if unknown:
        raise StageError(f"unknown stage(s) {sorted(unknown)}; allowed: {stage_names()}")
    spec = cl.ClusterSpec.parse(cluster) if cluster is not None else None
    if spec is None and (latency_node or accelerator_type):
        raise StageError("--latency-node and --accelerator-type place a cluster's latency "
                         "tasks; they need --cluster")
    if spec is not None:
        cl.require_ray()  # before a run directory exists
    with ExitStack() as stack:
        # The lock is taken before anything else touches the run: a second process on the
        # same run id refuses (exit 3) instead of interleaving with this one.
        if resume is not None:
            run = _open_for_resume(cfg, config_path, resume, stack)
        else:
            run = create_run(cfg, Path(config_path), run_id, hold_lock=stack)
        run.units.clear_stop()
        stack.enter_context(_signals_as_interrupt(run))
        run.log(f"run {run.run_id} of study {cfg.study}: {run.path}")
        if resume is not None:
            _log_resume(run)
        todo = [stage for stage in STAGES if stage.name in wanted]
        from tqdm.auto import tqdm

        bar = tqdm(todo, desc="study", unit="stage", disable=not progress)
        failures: list[str] = []
        try:
            shares = [stage for stage in todo if stage.name != "report"]
            if spec is not None and shares:
                for problem in cl.run_variants(
                        run, run.config(), shares, execute_stage, spec,
                        cl.Placement(latency_node, accelerator_type), progress=progress):
                    run.log(f"cluster: {problem}")
                run.log("cluster: every variant's tasks ended; the stages now run over all "
                        "variants (finished units are reused)")
            for stage in bar:
                bar.set_postfix_str(stage.notebook)
                try:
                    execute_stage(run, stage, progress=progress)
                except StageError as exc:
                    failures.append(str(exc))
                    # A stage that wrote its records failed only in some units (recorded
                    # with status=failed): later stages still run on what it finished.
                    if stage.name == "report" or not run.stage_records_path(stage.name).is_file():
                        break
            if failures:
                raise StageError("; ".join(failures))
        except KeyboardInterrupt:
            raise Interrupted(
                f"run {run.run_id} interrupted; finished units are kept -- resume with "
                f"`evalkit run {config_path} --resume {run.run_id}"
                + (f" --cluster {spec}`" if spec is not None else "`")
            ) from None
        finally:
            bar.close()
            _finish(run)
    return run


def _log_resume(run: Run) -> None:
    """Say, before any stage runs, what a resumed run keeps (each stage logs its skips)."""
    counts = run.units.counts()
    done = [name for name, st in run.units.stage_states().items() if st.get("state") == "done"]
    kept = ", ".join(f"{k}: {n}" for k, n in counts.items() if n) or "none"
    run.log(f"resume: finished units kept and skipped ({kept}); stages done earlier: "
            f"{', '.join(done) or 'none'}")


def _open_for_resume(cfg: StudyConfig, config_path: str | os.PathLike[str],
                     resume: str | os.PathLike[str], stack: ExitStack) -> Run:
    p = Path(resume)
    run = open_run(p if p.is_dir() else Path(cfg.output_root) / cfg.study / str(resume))
    stack.enter_context(file_lock(run.path / "run.lock", what=f"run {run.run_id}"))
    old = read_study(run.config_path)
    if old.model_dump(mode="json") != cfg.model_dump(mode="json"):
        raise RunDirError(
            f"{run.path}: the study file {config_path} changed since this run started; "
            "resume only with the same study (start a new run instead)"
        )
    return run


def _finish(run: Run) -> None:
    """Copy the report to the run root and refresh the outputs index (best effort).

    The root copy is where ``evalkit run`` and setup.sh point a local user;
    :func:`evalkit.core.archive.archive_run` removes it from a run that is committed.
    """
    rep = run.path / REPORT_HTML
    if rep.is_file():
        atomic_write_text(run.path / "report.html", rep.read_text(encoding="utf-8"))
    write_index(run.path.parent.parent)
