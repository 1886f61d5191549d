"""One variant's evaluation over all tasks: its backend (a vLLM server, through
:mod:`~evalkit.stages.accuracy.server`, or a transformers model), unit markers, the cache,
fallbacks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig
from evalkit.core.environment import hardware_label
from evalkit.core.errors import EngineError, UnsupportedSchemeError
from evalkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from evalkit.core.run import Run
from evalkit.core.specs import Variant
from evalkit.core.units import UnitKey
from evalkit.engine import record_engine_verdict
from evalkit.stages.accuracy.backends import (
    hf_activation_note,
    hf_device,
    hf_dtype,
    make_api_lm,
    make_hf_lm,
    plan_backend,
    run_lm_eval,
    tokenizer_adds_bos,
)
from evalkit.stages.accuracy.caching import (
    accuracy_cache_dir,
    cache_key,
    checkpoint_fingerprint,
    dir_fingerprint,
)
from evalkit.stages.accuracy.results import (
    UnitResult,
    finished_unit,
    per_doc_scores,
    read_samples_jsonl,
    samples_jsonl,
    summarize,
    write_raw,
)
from evalkit.stages.accuracy.server import BeforeClose, VariantServer
from evalkit.stages.accuracy.settings import (
    CACHE_FORMAT,
    STAGE,
    accuracy_spec,
    eval_settings,
    lm_eval_version,
)
from evalkit.stages.accuracy.worker import LmEvalWorker, WorkerModel
from evalkit.stages.serving import VariantSession

#: after a failed task, how long to wait for a vLLM server that answered errors to exit
#: before the failure counts as the task's own (vLLM's API process ends itself once its
#: engine is dead, within a second or two)
DEATH_GRACE_S = 10.0


class VariantRunner:
    """Evaluates all tasks of one variant, starting at most one server for them."""

    def __init__(self, cfg: StudyConfig, run: Run, variant: Variant, checkpoint: Path,
                 use_cache: bool, progress: Any, before_close: BeforeClose | None = None) -> None:
        self.cfg, self.run, self.variant, self.checkpoint = cfg, run, variant, checkpoint
        self.use_cache, self.progress = use_cache, progress
        self.before_close = before_close
        self.tm: Any = None  # lm-eval's TaskManager, given by run_stage once it is built
        self.plan = plan_backend(variant, cfg.engine.device)
        self.backend = self.plan.backend
        self.notes: list[str] = [self.plan.note] if self.plan.note else []
        self._lm: Any = None
        self._bos: bool | None = None
        self._restarted = False  # the server was restarted once after it died
        #: the process lm-eval runs in for a server evaluated beside others (start_worker)
        self.worker: LmEvalWorker | None = None
        self.server = VariantServer(cfg, run, variant, checkpoint, self._new_api_lm)

    @property
    def add_bos(self) -> bool:
        if self._bos is None:
            self._bos = tokenizer_adds_bos(self.checkpoint, self.cfg.model.trust_remote_code)
        return self._bos

    def close(self, beside: Sequence[str] = ()) -> None:
        """Hand this variant's live server to ``before_close`` (``beside``: variants whose
        servers wait idle meanwhile), then stop it."""
        self._lm = None
        self.server.close(beside, self.before_close)

    def close_quietly(self) -> None:
        """Stop this variant's server without handing it on (an interrupt); safe to repeat."""
        self._lm = None
        self.server.close_quietly()

    def done_in_run(self, task: str) -> dict[str, Any] | None:
        """The unit marker of ``task`` when this run finished it with the same settings."""
        done = self.run.units.done(UnitKey.accuracy(self.variant.name, task))
        if done is None or done.get("settings") != eval_settings(self.cfg):
            return None
        return done

    def needs_model(self, tasks: Sequence[tuple[str, str]]) -> bool:
        """Whether some task is not done in this run. A task in the cross-run cache counts:
        :meth:`evaluate` starts the model before it looks there, and the ``before_close``
        callback (the variant's latency points) uses that server; its key would also need
        the tokenizer read, which would delay the launch."""
        return any(self.done_in_run(task) is None for task, _ in tasks)

    def launch(self, tasks: Sequence[tuple[str, str]]) -> bool:
        """Start this variant's vLLM server without waiting for it, when its tasks need one:
        the servers of a group (``engine.parallel_starts`` variants, one by default) start
        side by side while lm-eval's task index and each variant's lm-eval model are built,
        and :meth:`evaluate` waits for this one when it first needs the model. False when no
        server was started (hf backend, nothing to evaluate, or the launch failed: the
        first evaluation then starts one the usual way and reports why)."""
        if self.backend != "vllm" or not self.needs_model(tasks):
            return False
        return self.server.launch()

    def prepare(self) -> None:
        """While the launched server starts: read the tokenizer and build lm-eval's model
        object for it, so that the variant's first task starts as soon as the server
        answers (:meth:`VariantServer.prepare`)."""
        self.server.prepare()

    def _new_api_lm(self, session: VariantSession) -> Any:
        """lm-eval's model for the server of ``session``: built here, or, when the variant
        has a worker process, built there (:class:`WorkerModel`: this process then never
        reads the tokenizer for it)."""
        v = self.variant.name
        args = (session.base_url, v, self.checkpoint, self.cfg, self.add_bos)
        if self.worker is not None:
            first = not self.worker.used
            model = self.worker.prepare(*args)
            model.built.add_done_callback(lambda _: self._log_worker_ready(model, first))
            return model
        t0 = time.monotonic()
        lm = make_api_lm(*args)
        self.run.log(f"accuracy {v}: tokenizer and lm-eval model for {session.base_url} ready "
                     f"in {time.monotonic() - t0:.1f}s")
        return lm

    def _log_worker_ready(self, model: WorkerModel, first: bool) -> None:
        v, built = self.variant.name, model.built
        if built.cancelled():  # the process was ended before it got to it
            return
        exc = built.exception()
        if exc is None:
            what = ("its start, lm-eval's task index, the tokenizer and lm-eval's model" if first
                    else "the tokenizer and lm-eval's model")
            self.run.log(f"accuracy {v}: lm-eval process ready for {model.base_url} in "
                         f"{model.seconds():.1f}s ({what})")
        else:
            self.run.log(f"accuracy {v}: the lm-eval process could not prepare its model for "
                         f"{model.base_url} ({str(exc).splitlines()[0]}); its next task "
                         "builds it")

    def start_worker(self) -> None:
        """Give this variant an lm-eval process of its own (:class:`LmEvalWorker`): it
        builds lm-eval's model while the server starts and evaluates the tasks."""
        if self.worker is None:
            self.worker = LmEvalWorker()

    def stop_worker(self, wait: bool = True) -> None:
        """End the lm-eval process (``wait=False``: without waiting for a task still running,
        which then fails against its stopped server); safe to repeat."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close(wait=wait)

    def settle(self) -> bool:
        """Wait for a server launched beside others (:meth:`VariantServer.settle`)."""
        return self.server.settle()

    def _backend_options(self) -> dict[str, Any]:
        if self.backend == "hf":
            dev = hf_device(self.cfg)
            return {"model": "hf", "device": dev, "dtype": hf_dtype(dev), "bos": self.add_bos}
        e = self.cfg.engine
        return {"model": "local-completions", "device": e.device, "dtype": e.dtype,
                "max_model_len": e.max_model_len, "bos": self.add_bos,
                "env": e.kernel_override.get(self.variant.name)}

    def key_material(self, task: str, lm_task: str) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT, "checkpoint": checkpoint_fingerprint(self.checkpoint),
            "task": task, "lm_task": lm_task, "settings": eval_settings(self.cfg),
            "taskpack": self._taskpack_fp(), "lm_eval": lm_eval_version(),
            "backend": self.backend, "backend_options": self._backend_options(),
        }

    def _taskpack_fp(self) -> str | None:
        if accuracy_spec(self.cfg).data != "local":
            return None
        if not hasattr(self, "_tp_fp"):

            self._tp_fp = dir_fingerprint(Path(taskpack.build_task_pack()))
        return self._tp_fp

    def _lm_for(self) -> Any:
        if self._lm is not None:
            return self._lm
        if self.backend == "vllm":
            try:
                self._lm = self.server.start(self.notes)
                return self._lm
            except UnsupportedSchemeError as exc:

                record_engine_verdict(self.run, self.variant.name, "unsupported", exc.reason,
                                      STAGE)
                if not self.plan.fallback_ok:
                    raise
                msg = (f"hf backend: vLLM refused the checkpoint on "
                       f"{hardware_label(self.cfg.engine.device)}: {exc.reason}")
                self.run.log(f"accuracy {self.variant.name}: falling back to hf -- {msg}")
                self.notes.append(msg)
                self.backend = "hf"
        t0 = time.monotonic()
        try:
            self._lm = make_hf_lm(self.checkpoint, self.cfg, self.add_bos)
        except Exception as exc:  # noqa: BLE001 -- any load failure ends the variant
            raise EngineError(f"hf backend cannot load {self.checkpoint}: "
                              f"{type(exc).__name__}: {exc}") from exc
        act = hf_activation_note(self.checkpoint, getattr(self._lm, "model", None))
        self.notes.append(f"hf {hf_dtype(hf_device(self.cfg))}")
        if act:
            self.notes.append(act)
        self.run.log(f"accuracy {self.variant.name}: hf model loaded in "
                     f"{time.monotonic() - t0:.1f}s ({hf_dtype(hf_device(self.cfg))}, "
                     f"{hf_device(self.cfg)}){'; ' + act if act else ''}")
        return self._lm

    def _run_lm_eval(self, lm: Any, lm_task: str) -> tuple[dict, str, pd.DataFrame]:
        """lm-eval on one task, in this variant's worker process when it has one (a vLLM
        server evaluated beside others), else here. Returns the results, the samples as JSON
        lines and the per-document scores."""
        if (self.worker is not None and self.backend == "vllm"
                and self.server.session is not None):
            return self.worker.evaluate(self.server.session.base_url, self.variant.name,
                                        self.checkpoint, self.cfg, self.add_bos, lm_task)
        results, samples = run_lm_eval(lm, lm_task, self.cfg, self.tm)
        return results, samples_jsonl(samples), per_doc_scores(samples)

    def _lm_eval(self, lm: Any, unit: str, lm_task: str,
                 notes: list[str]) -> tuple[dict, str, pd.DataFrame]:
        """lm-eval on one task (:meth:`_run_lm_eval`). When the variant's vLLM server died
        under it (an engine fault, the OOM killer), the server is started again and the task
        evaluated again from its start, once per variant; a server that dies again ends the
        variant (EngineError)."""
        try:
            return self._run_lm_eval(lm, lm_task)
        except Exception as exc:
            died = self.server.died(wait_s=DEATH_GRACE_S) if self.backend == "vllm" else None
            if died is None:
                raise
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if self._restarted:
                raise EngineError(
                    f"vLLM server of {self.variant.name} died again during {unit} ({died}; "
                    f"lm-eval: {why}); it was restarted once already and is not restarted "
                    f"again (its log: {self.server.log_path})") from exc
            self._restarted = True
            self.run.log(f"accuracy {unit}: vLLM server died during the task ({died}; lm-eval: "
                         f"{why}); restarting it once and evaluating the task again")
            self._lm = lm = self.server.restart()
            notes.append(f"vLLM server died during this task ({died}) and was restarted; the "
                         "task was evaluated again from its start")
            return self._run_lm_eval(lm, lm_task)

    def evaluate(self, task: str, lm_task: str) -> UnitResult:
        """Evaluate one task: run-level marker, then cross-run cache, then lm-eval."""
        v = self.variant.name
        unit = f"{v}/{task}"
        raw = self.run.sub("raw", STAGE, v, task, "x").parent
        done = self.done_in_run(task)
        if done is not None:
            self.run.log(f"accuracy {unit}: already done in this run ({done['backend']}), reused")
            return finished_unit(v, task, raw, done)
        settings = eval_settings(self.cfg)
        lm = self._lm_for()  # may switch self.backend to hf; not part of the task's time
        t0 = time.monotonic()
        material = self.key_material(task, lm_task)
        key = cache_key(material)
        cdir = accuracy_cache_dir() / key
        notes = list(self.notes)
        if self.use_cache and (cdir / "results.json").is_file():
            results = read_json(cdir / "results.json")
            samples_text = (cdir / "samples.jsonl").read_text(encoding="utf-8")
            scores = per_doc_scores(read_samples_jsonl(cdir / "samples.jsonl"))
            notes.append("cached")
            self.run.log(f"accuracy {unit}: cached result reused from {cdir}")
        else:
            if accuracy_spec(self.cfg).data == "local":

                taskpack.check_task_data(task)  # a clear error, not one from deep in datasets
            results, samples_text, scores = self._lm_eval(lm, unit, lm_task, notes)
            if self.use_cache and not cdir.exists():
                with contextlib.suppress(FileExistsError, OSError):
                    with atomic_dir(cdir) as tmp:
                        atomic_write_json(tmp / "results.json", results)
                        atomic_write_text(tmp / "samples.jsonl", samples_text)
                        atomic_write_json(tmp / "key.json", material)
        seconds = time.monotonic() - t0
        write_raw(raw, results, samples_text, scores)
        self.run.units.mark(UnitKey.accuracy(v, task), {
            "backend": self.backend, "settings": settings, "cache_key": key,
            "seconds": seconds, "notes": notes, "checkpoint": str(self.checkpoint),
        })
        n = summarize(results, lm_task)
        self.run.log(f"accuracy {unit}: {self.backend} {seconds:.1f}s, "
                     f"{n[0].n if n else '?'} docs"
                     + ("".join(f", {m.label}={m.value:.4f}" for m in n)))
        return UnitResult(v, task, self.backend, results, raw / "samples.jsonl", scores,
                          seconds, notes)
