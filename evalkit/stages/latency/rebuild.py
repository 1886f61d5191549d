"""Records and per-request samples re-derived from a run's raw latency files (``evalkit
rebuild``, intervals, SLO attainment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evalkit.core import records as rec
from evalkit.core.errors import StageError
from evalkit.core.io import json_exists, read_json
from evalkit.core.run import Run
from evalkit.core.traffic import effective_load
from evalkit.metrics.latency import offline_rows
from evalkit.metrics.roofline import (
    gpu_bandwidth_gbps,
)
from evalkit.stages.latency.derive import server_point_records
from evalkit.stages.latency.offline import logged_kv_tokens
from evalkit.stages.latency.points import rate_points
from evalkit.stages.latency.rates import RateSweep, capacity_key, load_point_data
from evalkit.stages.latency.raw import STAGE, offline_iters, point_stem, trial_files
from evalkit.stages.latency.sweep import LatencyStage


def recorded_prefix_caching(run: Run) -> bool:
    """Whether the run's engines ran with automatic prefix caching.

    Its study file says so from the time ``engine.prefix_caching`` existed (off by default);
    a study file without the key is older, and its engines ran with vLLM's default: on.
    """

    raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) or {}
    return bool((raw.get("engine") or {}).get("prefix_caching", True))


def rebuild_records(run: Run) -> pd.DataFrame:
    """Recompute the latency point records of a run from its raw per-request files.

    Every measured server point keeps vLLM's per-request data (``<point>_t<k>.json``, or
    ``<point>.json`` before trials) and the server's /metrics delta
    (``<point>.summary.json``), every offline point its iterations (``offline.json``); this
    derives the records again with the current definitions and validity checks -- e.g.
    after a fix in :func:`per_request_metrics`, or to mark an older run's cache-served points
    invalid -- without re-measuring. Identity columns (run, variant, hardware, ...) are kept
    from the existing records; the roofline rows are recomputed. An interrupted stage has no
    stage records yet: its finished points (unit files) are the starting point. Writes the
    unit files and the stage records; returns the stage records.
    """
    stage_file = run.stage_records_path(STAGE)
    units = sorted(run.path.glob(f"raw/{STAGE}/*/units/*.parquet"))
    unit_records = [rec.read_records(unit) for unit in units]
    if stage_file.is_file():
        old = rec.read_records(stage_file)
    elif units:
        old = rec.combine(unit_records)
    else:
        raise StageError(f"{run.path}: no latency records to rebuild")
    cfg = run.config()
    lat_hw = old.loc[old["stage"] == "latency", "hardware"].dropna()
    hw = str(lat_hw.iloc[0]) if len(lat_hw) else ""
    st = LatencyStage(cfg, run, None, None)
    st.hardware = hw
    gbps = gpu_bandwidth_gbps(hw)
    st.bandwidth = (gbps, f"vendor peak for {hw}") if gbps else (None, f"{hw}: bandwidth unknown")
    caching = recorded_prefix_caching(run)
    variants = {variant.name: variant for variant in cfg.variants}
    ident = ["run_id", "study", "model", "variant", "scheme", "method", "stage", "hardware"]
    offline_rows_of: dict[Path, list[dict[str, Any]]] = {}
    frames = [old]
    for unit, prev in zip(units, unit_records, strict=True):
        pts = prev[prev["mode"].isin(["server", "offline"]) & prev["status"].isin(["ok", "invalid"])]
        if pts.empty or str(pts.iloc[0]["variant"]) not in variants:
            continue
        first = pts.iloc[0]
        variant = variants[str(first["variant"])]
        vdir = unit.parent.parent
        fields = {column: first[column] for column in ("mode", "load", "workload", "concurrency",
                                                       "request_rate", "input_len", "output_len")}
        common = {column: first[column] for column in ident}
        if first["mode"] == "server":
            name = point_stem(first["workload"], first["concurrency"], first["request_rate"])
            files = trial_files(vdir, name)
            if not files:
                continue
            details = [read_json(trial_file.with_suffix("") if trial_file.suffix == ".gz"
                                 else trial_file) for trial_file in files]
            summary_file = vdir / f"{name}.summary.json"
            summary = read_json(summary_file) if json_exists(summary_file) else {}
            summary.setdefault("slo", cfg.report.slo.limits())  # goodput of a rate point
            if pd.isna(fields["load"]):  # before 1.3: server points were closed loops
                fields["load"] = summary.get("load") or "burst"
            fields["load"] = effective_load(str(fields["load"]), int(fields["concurrency"]),
                                            float(fields["request_rate"]),
                                            summary.get("requests_per_trial"))
            data = server_point_records(details, fields, summary=summary,
                                        seed=cfg.latency.seed if cfg.latency else 0)
            delta = summary.get("server_metrics")
            wl = next((workload for workload in (cfg.latency.workloads if cfg.latency else ())
                       if workload.name == first["workload"]), None)
            new = rec.make_records(data.rows, **{"backend": first["backend"], **common})
            new = st.guard(variant, new, server_delta=delta or {}, prefix_caching=caching,
                           jit=summary.get("jit_events") or (),
                           floor_input_len=data.min_prompt_len
                           if wl is not None and wl.lengths_vary else None)
        else:
            off = vdir / "offline.json"
            if off not in offline_rows_of:
                offline_rows_of[off] = list(read_json(off)["rows"]) if json_exists(off) else []
            its = offline_iters(offline_rows_of[off], first["concurrency"], first["input_len"],
                                first["output_len"])
            if not its:
                continue
            if pd.isna(fields["load"]):
                fields["load"] = "batch"
            new = rec.make_records(offline_rows(its, **fields),
                                   **{"backend": first["backend"], **common})
            prov = vdir / "offline-provenance.json"
            kv_tokens = (logged_kv_tokens(read_json(prov).get("engine_log") or {})
                         if json_exists(prov) else None)
            new = st.guard(variant, new, offline_iters=its, prefix_caching=caching,
                           kv_cache_tokens=kv_tokens)
        rec.write_records(new, unit)
        frames.append(new)
    frames += _capacities(st, cfg)
    df = rec.combine(frames)
    # roofline rows again, for the hardware the points were measured on
    df = st.roofline_again(df)
    run.write_stage_records(STAGE, df)
    run.log(f"latency: rebuilt {len(frames) - 1} point(s) from raw per-request data")
    return df


def _capacities(st: LatencyStage, cfg: Any) -> list[pd.DataFrame]:
    """Capacity at the SLO again, for every finished rate sweep, from the rebuilt points."""
    if cfg.latency is None or cfg.latency.traffic is None:
        return []
    sweep = RateSweep(st)
    st.collect()  # start from an empty list: only the capacities written below
    for v in cfg.variants:
        for w in cfg.latency.traffic_workloads():
            if not st.run.units.done(capacity_key(v.name, w.name)):
                continue
            measured = []
            refined = sweep.refined_rates(v, w)  # read before write_capacity rewrites it
            for p in rate_points(cfg.latency, w, sweep.variant_rates(v, w)):
                data = load_point_data(st, st.raw / v.name, p) if st.run.units.done(
                    p.key(v.name)) else None
                if data is not None:
                    measured.append((p, data))
            sweep.write_capacity(v, w, measured, refined=refined)
    return st.collect()

