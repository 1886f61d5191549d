"""lm-eval in a process of its own for a variant evaluated beside others
(``accuracy.concurrent_servers``).

Threads in one process share one interpreter lock, and lm-eval's client work for a task
(building its requests, tokenizing them, parsing the logprobs each call returns, scoring,
serializing the samples) is Python. On one H200 with six variants evaluated at once from one
process (hopper-gemma-gptq, 2026-12-07), that process held 2.5 cores, the machine's load
stayed near 3 of 16 cores, and the six servers sat idle between bursts: the client, not the
servers, set the pace. One worker process per variant gives each client a core of its own.
The vLLM server itself stays with the stage (started, restarted, handed to the latency
points and stopped there); the worker only talks to its address.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.core.config import StudyConfig
from evalkit.core.errors import EvalkitError
from evalkit.stages.accuracy.backends import make_api_lm, run_lm_eval, task_manager
from evalkit.stages.accuracy.results import per_doc_scores, samples_jsonl
from evalkit.stages.accuracy.settings import accuracy_spec

# in the worker process: lm-eval's task manager (built once) and the model object for the
# server address last used (a restarted server has a new port)
_state: dict[str, Any] = {}


class WorkerTaskError(RuntimeError):
    """A task failed inside the worker; the message names the original exception and holds
    its traceback (many client exceptions cannot travel between processes as they are)."""


@dataclass(frozen=True)
class WorkerModel:
    """What the stage holds for a variant whose lm-eval runs in a worker: the server address
    the worker builds lm-eval's model for, that build, and when it was asked for (its time is
    counted from the request, so that a new process's start and imports count)."""

    base_url: str
    built: Future[None]
    requested: float

    def seconds(self) -> float:
        """Seconds from the request until now (read once :attr:`built` is done)."""
        return time.monotonic() - self.requested


def _ensure_model(base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                  add_bos: bool) -> None:
    data = accuracy_spec(cfg).data
    if _state.get("data") != data:
        _state.update(data=data, tm=task_manager(data))
    if _state.get("url") != base_url:
        _state.pop("url", None)
        _state["lm"] = make_api_lm(base_url, served_name, tokenizer, cfg, add_bos)
        _state["url"] = base_url


def _portable(exc: Exception) -> Exception:
    """``exc`` when it can travel back to the stage as it is (an evalkit error that pickles),
    else a :class:`WorkerTaskError` naming it, with its traceback."""
    if isinstance(exc, EvalkitError):
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 -- sent as text below
            pass
        else:
            return exc
    return WorkerTaskError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def prepare_model(base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                  add_bos: bool) -> None:
    """In the worker: lm-eval's task index and its model for the server at ``base_url``
    (the tokenizer read), built while that server starts."""
    try:
        _ensure_model(base_url, served_name, tokenizer, cfg, add_bos)
    except Exception as exc:
        raise _portable(exc) from None


def evaluate_task(base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                  add_bos: bool, lm_task: str) -> tuple[dict, str, pd.DataFrame]:
    """In the worker: one task against the server at ``base_url`` (the model built first
    when :func:`prepare_model` did not build it for that address). Returns lm-eval's
    results, the samples as JSON lines and the per-document scores (what the stage writes)."""
    try:
        _ensure_model(base_url, served_name, tokenizer, cfg, add_bos)
        results, samples = run_lm_eval(_state["lm"], lm_task, cfg, _state["tm"])
        return results, samples_jsonl(samples), per_doc_scores(samples)
    except Exception as exc:
        raise _portable(exc) from None


class LmEvalWorker:
    """One process (spawned: no copy of the stage's threads or servers) evaluating one
    variant's tasks one at a time; :meth:`close` ends it."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1,
                                         mp_context=multiprocessing.get_context("spawn"))
        #: whether anything was sent to the process yet (the first request starts it)
        self.used = False

    def prepare(self, base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                add_bos: bool) -> WorkerModel:
        """Have the process build lm-eval's model for the server at ``base_url`` (starting
        the process when it is the first request) without waiting for it; tasks sent after
        this run once it is done, and build the model themselves when it failed."""
        requested = time.monotonic()
        self.used = True
        built = self._pool.submit(prepare_model, base_url, served_name, tokenizer, cfg, add_bos)
        return WorkerModel(base_url, built, requested)

    def evaluate(self, base_url: str, served_name: str, tokenizer: Path, cfg: StudyConfig,
                 add_bos: bool, lm_task: str) -> tuple[dict, str, pd.DataFrame]:
        self.used = True
        return self._pool.submit(evaluate_task, base_url, served_name, tokenizer, cfg,
                                 add_bos, lm_task).result()

    def close(self, wait: bool = True) -> None:
        """End the process (``wait=False``: without waiting for a task still running, which
        then fails against its stopped server)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
