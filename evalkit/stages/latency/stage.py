"""The latency stage: every variant's points in groups of servers (or offline engines), the
roofline rows, the records written; and :func:`measure_on`, the points of one variant on a
server another stage started."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit.assets import mixes
from evalkit.core import records as rec
from evalkit.core.config import StudyConfig
from evalkit.core.errors import EvalkitError
from evalkit.core.run import Run
from evalkit.core.specs import LatencySpec, Variant
from evalkit.core.units import StageResult
from evalkit.stages.latency.client import vllm_range_ratio
from evalkit.stages.latency.offline import measure_offline
from evalkit.stages.latency.points import sweep_points
from evalkit.stages.latency.rates import RateSweep, capacity_key
from evalkit.stages.latency.raw import STAGE
from evalkit.stages.latency.servers import ServerSweep
from evalkit.stages.latency.sweep import LatencyStage
from evalkit.stages.serving import VariantSession


def measure_on(cfg: StudyConfig, run: Run, session: VariantSession) -> None:
    """Measure the session's variant's pending server-mode points on a server another stage
    started.

    The accuracy stage calls this (through the callback the notebook gives it) before
    stopping a variant's server, so a variant costs one engine start for both stages; the
    latency stage then finds these points done (unit markers) and reuses their records.
    ``session.beside``: variants whose servers are up, idle, on the same device meanwhile
    (``engine.parallel_starts``); the records say so.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    if cfg.latency is None or "server" not in cfg.latency.modes:
        return
    variant = session.variant
    st = LatencyStage(cfg, run, {variant.name: session.checkpoint}, None)
    if st.cpu_skip_reason(variant):
        return  # the latency stage records why, without measuring
    todo = st.pending(variant)
    sweep = RateSweep(st)
    if not todo and not sweep.pending(variant):
        return
    run.log(f"latency: measuring {variant.name} on the accuracy stage's server "
            f"({len(todo)} points)")
    total = len(todo) + sweep.total()
    with tqdm(total=total, desc=f"latency {variant.name}", unit="point") as bar:
        ServerSweep(st).measure(session, todo, bar)


def run_stage(cfg: StudyConfig, run: Run, *, checkpoints: Mapping[str, Path] | None = None,
              resolved: Any | None = None) -> StageResult:
    """Measure every variant's latency as ``cfg.latency`` describes; write the records.

    Args:
        cfg: the study.
        run: the run directory (resumable: finished points are reused, not re-measured).
        checkpoints: variant name -> checkpoint directory; default: the quantize stage's.
        resolved: the resolved model (name, path, load_format); default
            ``evalkit.assets.models.resolve_model(cfg.model)``.

    Returns:
        The stage's records (also written to ``records/latency.parquet``) and the points that
        did not produce numbers: an engine or benchmark failed (``failed``), or the variant
        cannot be served here (``unsupported``). Nothing is raised for them:
        :func:`raise_for_failures` raises as the study's ``latency.unsupported`` asks.

    Raises:
        StageError: the study has no latency section.
        AssetError: a request mix's prompt text (the task pack's data) is not there; raised
            before any engine starts.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    st = LatencyStage(cfg, run, checkpoints, resolved)
    lat: LatencySpec = st.lat
    modes = [m for m in ("server", "offline") if m in lat.modes]
    if "server" in modes and any(vllm_range_ratio(w) is None for w in lat.workloads):
        mixes.text_dir()  # a mix's prompt text: missing, it fails here, before any engine starts
    rate_pts = RateSweep(st).total()
    total = (sum(len(st.points(m)) for m in modes) + rate_pts) * len(cfg.variants)
    run.log(f"latency: {len(cfg.variants)} variants x {total // max(1, len(cfg.variants))} "
            f"points on {st.hardware}")
    t0 = time.monotonic()
    k = cfg.engine.parallel_starts if "server" in modes else 1
    servers = ServerSweep(st)
    with tqdm(total=total, desc="latency", unit="point") as bar:
        for i in range(0, len(cfg.variants), k):
            group = _group(st, cfg.variants[i:i + k], modes, bar)
            if "server" in modes:
                servers.run_group(group, bar)
            for v, ckpt in group:
                if "offline" in modes:
                    measure_offline(st, v, ckpt, bar)
                st.roofline_rows(v, ckpt)
    df = rec.combine(st.frames) if st.frames else rec.empty_records()
    run.write_stage_records(STAGE, df)
    run.log(f"latency: {len(df)} records in {time.monotonic() - t0:.0f} s")
    return StageResult(STAGE, df, list(st.failures))


def _group(st: LatencyStage, variants: list[Variant], modes: list[str], bar: Any
           ) -> list[tuple[Variant, Path]]:
    """The variants of a group that are to be measured, with their checkpoints; the others
    (skipped on this CPU, no checkpoint) get their records here."""
    group: list[tuple[Variant, Path]] = []
    for v in variants:
        bar.set_postfix_str(v.name)
        skip = st.cpu_skip_reason(v)
        if skip:
            # known before any start: no ~1.5 min refused start, no emulated sweep
            why = f"not measured on this hardware: {skip}"
            st.run.log(f"latency: {v.name} {why}")
            for mode in modes:
                st.status_rows(v, mode, "unsupported", why)
            RateSweep(st).status(v, "unsupported", why)
            bar.update(sum(len(st.points(m)) for m in modes) + RateSweep(st).total())
            continue
        try:
            group.append((v, st.checkpoint(v)))
        except EvalkitError as exc:  # quantization failed, checkpoint gone: record, go on
            st.run.log(f"latency: {v.name} FAILED, no checkpoint: {exc}")
            for mode in modes:
                st.status_rows(v, mode, "failed", str(exc))
            RateSweep(st).status(v, "failed", str(exc))
            bar.update(sum(len(st.points(m)) for m in modes) + RateSweep(st).total())
    return group


def finished_variants(cfg: StudyConfig, run: Run) -> list[str]:
    """The variants whose every planned latency unit finished in ``run``: each grid and anchor
    point of the study's modes and, per rate-swept workload, the capacity records (written
    when the sweep ends, bisection included). A stage that was interrupted or failed keeps
    these variants whole -- their points were measured exactly as in a finished stage -- and
    leaves the others partial or unmeasured."""
    lat = cfg.latency
    if lat is None:
        return []
    modes = [m for m in ("server", "offline") if m in lat.modes]
    out = []
    for v in cfg.variants:
        keys = [p.key(v.name) for m in modes for p in sweep_points(lat, m)]
        if "server" in modes:
            keys += [capacity_key(v.name, w.name) for w in lat.traffic_workloads()]
        if keys and all(run.units.done(k) is not None for k in keys):
            out.append(v.name)
    return out


def raise_for_failures(cfg: StudyConfig, result: StageResult) -> None:
    """Raise as the latency stage used to: for every failed point, and for unsupported ones
    when the study's ``latency.unsupported`` is ``error``.

    Raises:
        StageError: some point did not finish.
    """
    result.raise_for_failures(unsupported_is_error=bool(
        cfg.latency is not None and cfg.latency.unsupported == "error"))
