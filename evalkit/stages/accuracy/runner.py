"""One variant's evaluation over all tasks: its engine (or transformers model), unit markers,
the cache, fallbacks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.assets import taskpack
from evalkit.core.config import StudyConfig, Variant
from evalkit.core.environment import hardware_label
from evalkit.core.errors import EngineError, EvalkitError, UnsupportedSchemeError
from evalkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from evalkit.core.run import Run
from evalkit.core.schemes import activation_mismatch
from evalkit.engine import VLLMServer, provenance, record_engine_verdict
from evalkit.stages import latency
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
    _dir_fingerprint,
    accuracy_cache_dir,
    cache_key,
    checkpoint_fingerprint,
)
from evalkit.stages.accuracy.results import (
    UnitResult,
    _finished_unit,
    _read_samples_jsonl,
    _samples_jsonl,
    _write_raw,
    per_doc_scores,
    summarize,
)
from evalkit.stages.accuracy.settings import CACHE_FORMAT, STAGE, _acc, eval_settings, lm_eval_version


class _VariantRunner:
    """Evaluates all tasks of one variant, starting at most one server for them."""

    def __init__(self, cfg: StudyConfig, run: Run, variant: Variant, checkpoint: Path,
                 use_cache: bool, progress: Any) -> None:
        self.cfg, self.run, self.variant, self.checkpoint = cfg, run, variant, checkpoint
        self.use_cache, self.progress = use_cache, progress
        self.tm: Any = None  # lm-eval's TaskManager, given by run_stage once it is built
        self.plan = plan_backend(variant, cfg.engine.device)
        self.backend = self.plan.backend
        self.notes: list[str] = [self.plan.note] if self.plan.note else []
        self._stack = contextlib.ExitStack()
        self._lm: Any = None
        self._bos: bool | None = None
        self._server: Any = None  # the running VLLMServer the model talks to
        self._launched: Any = None  # a VLLMServer launched (with its group), not yet in use
        self._launch_error: EngineError | None = None
        self._api_lm: Any = None  # lm-eval's model for the launched server, built meanwhile

    @property
    def add_bos(self) -> bool:
        if self._bos is None:
            self._bos = tokenizer_adds_bos(self.checkpoint, self.cfg.model.trust_remote_code)
        return self._bos

    def close(self, beside: Sequence[str] = ()) -> None:
        """Measure the latency points on this variant's server (``beside``: variants whose
        servers wait idle meanwhile), then stop it."""
        server = self._server
        if server is not None and server.alive() and self.cfg.latency is not None:
            # One engine start per variant: measure its latency points on this server
            # before stopping it; the latency stage then finds them done.

            try:
                latency.measure_with_server(self.cfg, self.run, self.variant, server,
                                            Path(self.checkpoint), server.log_path,
                                            beside=beside)
            except EvalkitError as exc:
                self.run.log(f"latency on the accuracy server of {self.variant.name} failed "
                             f"(the latency stage will retry): {exc}")
        self.close_quietly()

    def close_quietly(self) -> None:
        """Stop this variant's server without measuring (an interrupt); safe to repeat."""
        self._server = None
        self._lm = self._api_lm = None
        launched, self._launched = self._launched, None
        if launched is not None:  # launched but never needed (e.g. a failure, an interrupt)
            launched.stop()
        self._stack.close()

    def done_in_run(self, task: str) -> dict[str, Any] | None:
        """The unit marker of ``task`` when this run finished it with the same settings."""
        done = self.run.unit_done(STAGE, f"{self.variant.name}/{task}")
        if done is None or done.get("settings") != eval_settings(self.cfg):
            return None
        return done

    def needs_model(self, tasks: Sequence[tuple[str, str]]) -> bool:
        """Whether some task is not done in this run. A task in the cross-run cache counts:
        :meth:`evaluate` starts the model before it looks there, and the variant's latency
        points are measured on that server; its key would also need the tokenizer read,
        which would delay the launch."""
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
        server = self._server_object()
        try:
            server.launch()
        except EvalkitError as exc:
            self.run.log(f"accuracy {self.variant.name}: server launch failed: {exc}")
            return False
        self._launched = server
        return True

    def prepare(self) -> None:
        """While the launched server starts: read the tokenizer and build lm-eval's model
        object for it (it only stores the server's address), so that the variant's first
        task starts as soon as the server answers. A failure here is raised where the
        variant first needs its model."""
        server = self._launched
        if server is None or self._api_lm is not None:
            return
        t0 = time.monotonic()
        try:
            self._api_lm = self._new_api_lm(server)
            self.run.log(f"accuracy {self.variant.name}: tokenizer and lm-eval model ready "
                         f"in {time.monotonic() - t0:.1f}s while the server starts")
        except Exception as exc:  # noqa: BLE001 -- reported where the model is needed
            self.run.log(f"accuracy {self.variant.name}: could not prepare lm-eval's model "
                         f"while the server starts ({type(exc).__name__}: {exc}); retried "
                         "once the server is up")

    def _new_api_lm(self, server: Any) -> Any:
        return make_api_lm(server.base_url, self.variant.name, self.checkpoint, self.cfg,
                           self.add_bos)

    def settle(self) -> bool:
        """Wait for a server launched beside others, so that none is still starting while
        another variant's latency is measured; True when it is up. A failed start is kept
        and raised where this variant first needs its model."""
        if self._launched is None:
            return False
        if self._launched.startup_s is None:
            try:
                self._launched.wait()
            except EngineError as exc:
                self._launched, self._launch_error = None, exc
                return False
        return True

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
        if _acc(self.cfg).data != "local":
            return None
        if not hasattr(self, "_tp_fp"):

            self._tp_fp = _dir_fingerprint(Path(taskpack.build_task_pack()))
        return self._tp_fp

    def _lm_for(self) -> Any:
        if self._lm is not None:
            return self._lm
        if self.backend == "vllm":
            try:
                self._lm = self._start_vllm()
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

    def _server_object(self) -> Any:

        env = {}
        override = self.cfg.engine.kernel_override.get(self.variant.name)
        if override:
            k, v = override.split("=", 1)
            env[k] = v
        return VLLMServer(
            self.checkpoint, engine=self.cfg.engine,
            log_path=self.run.sub("logs", f"vllm-accuracy-{self.variant.name}.log"),
            served_model_name=self.variant.name, extra_env=env,
            trust_remote_code=self.cfg.model.trust_remote_code,
        )

    def _start_vllm(self) -> Any:
        if self._launch_error is not None:  # started beside others and failed (settle)
            exc, self._launch_error = self._launch_error, None
            raise exc
        if self._launched is None:  # not launched with its group (failed, or not needed then)
            self._launched = self._server_object().launch()
        self.prepare()  # done already when launched with its group
        server, self._launched = self._launched, None
        self._stack.callback(server.stop)
        server.wait()
        self._server = server

        kernels = provenance(server.log_text()).get("linear_kernels")
        if kernels:
            self.notes.append(f"vLLM kernels: {kernels}")
        mismatch = activation_mismatch(self.variant.scheme, kernels)
        if mismatch:
            self.run.log(f"accuracy: WARNING {self.variant.name}: {mismatch}")
        self.run.log(f"accuracy {self.variant.name}: vLLM server up in {server.startup_s:.1f}s "
                     f"at {server.base_url}; kernels: {kernels or 'unquantized'}")
        lm, self._api_lm = self._api_lm, None
        # None: preparing it failed while the server started; once more, raising this time
        return lm if lm is not None else self._new_api_lm(server)

    def evaluate(self, task: str, lm_task: str) -> UnitResult:
        """Evaluate one task: run-level marker, then cross-run cache, then lm-eval."""
        v = self.variant.name
        unit = f"{v}/{task}"
        raw = self.run.sub("raw", STAGE, v, task, "x").parent
        done = self.done_in_run(task)
        if done is not None:
            self.run.log(f"accuracy {unit}: already done in this run ({done['backend']}), reused")
            return _finished_unit(v, task, raw, done)
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
            samples = _read_samples_jsonl(cdir / "samples.jsonl")
            notes.append("cached")
            self.run.log(f"accuracy {unit}: cached result reused from {cdir}")
        else:
            if _acc(self.cfg).data == "local":

                taskpack.check_task_data(task)  # a clear error, not one from deep in datasets
            results, samples = run_lm_eval(lm, lm_task, self.cfg, self.tm)
            samples_text = _samples_jsonl(samples)
            if self.use_cache and not cdir.exists():
                with contextlib.suppress(FileExistsError, OSError):
                    with atomic_dir(cdir) as tmp:
                        atomic_write_json(tmp / "results.json", results)
                        atomic_write_text(tmp / "samples.jsonl", samples_text)
                        atomic_write_json(tmp / "key.json", material)
        seconds = time.monotonic() - t0
        scores = per_doc_scores(samples)
        _write_raw(raw, results, samples_text, scores)
        self.run.mark_unit(STAGE, unit, {
            "backend": self.backend, "settings": settings, "cache_key": key,
            "seconds": seconds, "notes": notes, "checkpoint": str(self.checkpoint),
        })
        n = summarize(results, lm_task)
        self.run.log(f"accuracy {unit}: {self.backend} {seconds:.1f}s, "
                     f"{n[0].n if n else '?'} docs"
                     + ("".join(f", {m.label}={m.value:.4f}" for m in n)))
        return UnitResult(v, task, self.backend, results, raw / "samples.jsonl", scores,
                          seconds, notes)
