"""Offline mode: a variant's batch points timed through ``vllm.LLM`` in one child process
(:func:`evalkit.engine.run_offline`), one guarded unit per point."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.errors import EngineError, UnsupportedSchemeError
from evalkit.core.io import atomic_write_json
from evalkit.core.specs import Variant
from evalkit.metrics.latency import offline_rows
from evalkit.stages.latency.client import prompt_seed
from evalkit.stages.latency.raw import offline_iters
from evalkit.stages.latency.sweep import LatencyStage
from evalkit.stages.serving import kernel_words, warn_kernel_substitution


def measure_offline(st: LatencyStage, v: Variant, ckpt: Path, bar: Any) -> None:
    """The offline points of ``v`` not measured yet (failures recorded in ``st``)."""
    todo = st.todo(v, "offline", bar)
    if not todo:
        return
    vdir = st.raw / v.name
    tokenizer = st.tokenizer_for(ckpt)
    out = vdir / "offline.json"
    log_path = st.run.sub("logs", f"vllm-offline-{v.name}.log")
    st.run.log(f"latency: offline engine for {v.name}: {len(todo)} batch points")
    t0 = time.monotonic()
    try:
        rows = eng.run_offline(
            ckpt, engine=st.cfg.engine, out_path=out,
            points=[dict(batch_size=p.concurrency, input_len=p.workload.input_len,
                         output_len=p.workload.output_len) for p in todo],
            log_path=log_path,
            iters=st.lat.offline_iters, warmups=1 if st.lat.warmups else 0,
            seed=prompt_seed(st.lat.seed, "offline", 0, math.inf, 0),
            load_format=getattr(st.model, "load_format", None),
            tokenizer=None if tokenizer == ckpt else tokenizer,
            trust_remote_code=st.cfg.model.trust_remote_code)
    except UnsupportedSchemeError as exc:
        st.status_rows(v, "offline", "unsupported", exc.reason)
        bar.update(len(todo))
        return
    except EngineError as exc:
        st.status_rows(v, "offline", "failed", str(exc), str(exc).splitlines()[0])
        bar.update(len(todo))
        return
    st.run.log(f"latency: offline {v.name} done in {time.monotonic() - t0:.0f} s")
    kv_tokens = _note_kernels(st, v, log_path)
    for p in todo:
        its = offline_iters(rows, p.concurrency, p.workload.input_len, p.workload.output_len)
        df = rec.make_records(offline_rows(its, **p.fields()), **st.common(v))
        df = st.guard(v, df, offline_iters=its, kv_cache_tokens=kv_tokens)
        st.save_unit(v, p.key(v.name), df, "ok")
        bar.update(1)


def _note_kernels(st: LatencyStage, v: Variant, log_path: Path) -> int | None:
    """The kernels the offline engine's log reports (linear layers, experts), named in the run
    log and kept beside the variant's raw rows (``offline-provenance.json``, which the report
    reads for its engine provenance and kernel-substitution caveat): an offline engine has no
    startup record to carry them. Returns the KV cache size the log reports, in tokens."""
    if not log_path.is_file():
        return None
    prov = eng.provenance(log_path.read_text(encoding="utf-8", errors="replace"))
    atomic_write_json(st.raw / v.name / "offline-provenance.json", {
        "variant": v.name, "scheme": v.scheme, "method": v.method,
        "engine": st.cfg.engine.model_dump(mode="json"),
        "log": str(log_path.relative_to(st.run.path)), "engine_log": prov})
    st.run.log(f"latency: offline {v.name} kernels: {kernel_words(prov)}")
    warn_kernel_substitution(st.run, "latency", v, prov.get("linear_kernels"))
    return logged_kv_tokens(prov)


def logged_kv_tokens(engine_log: Mapping[str, Any]) -> int | None:
    """The KV cache size an engine log reported (``provenance``'s ``kv_cache_tokens``, e.g.
    ``898,784``) as a number of tokens; None where the log did not say."""
    tokens = str(engine_log.get("kv_cache_tokens") or "").replace(",", "")
    return int(tokens) if tokens.isdigit() else None
