"""Names and readers of a latency point's raw files under ``raw/latency/<variant>/`` (per-trial
client JSON, ``offline.json``) and its unit key (:meth:`evalkit.core.units.UnitKey.latency`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.core import records as rec
from evalkit.core.io import json_exists, read_json
from evalkit.core.units import UnitKey, rate_label
from evalkit.metrics.latency import per_request_metrics
from evalkit.stages.latency.derive import steady_trial

STAGE = "latency"


def point_stem(workload: str, concurrency: int, request_rate: float) -> str:
    """File stem of one server-mode point's raw data under ``raw/latency/<variant>/``
    (``<stem>.json`` per-request data, ``<stem>.summary.json`` client summary + /metrics)."""
    return f"{workload}_c{int(concurrency)}_r{rate_label(float(request_rate))}"


def trial_files(vdir: Path, stem: str) -> list[Path]:
    """The per-request result files of one server point, trial by trial.

    ``<stem>_t<k>.json`` (or its archived ``.json.gz``) in trial order; a run from before
    trials existed has one ``<stem>.json``.
    """
    found: dict[int, Path] = {}
    for f in vdir.glob(f"{stem}_t*.json*"):
        tail = f.name[len(stem) + 2:].removesuffix(".gz").removesuffix(".json")
        if tail.isdigit() and f.name.endswith((".json", ".json.gz")):
            if int(tail) not in found or f.suffix == ".json":
                found[int(tail)] = f
    if found:
        return [found[k] for k in sorted(found)]
    return [f for f in (vdir / f"{stem}.json", vdir / f"{stem}.json.gz") if f.is_file()][:1]


def load_trials(vdir: Path, stem: str) -> list[dict[str, Any]]:
    """:func:`per_request_metrics` of every trial of one server point (see :func:`trial_files`)."""
    return [per_request_metrics(read_json(f.with_suffix("") if f.suffix == ".gz" else f))
            for f in trial_files(vdir, stem)]


def load_window_trials(vdir: Path, workload: str, concurrency: int, request_rate: float
                       ) -> list[dict[str, Any]]:
    """:func:`per_request_metrics` of every trial of one server point over the requests its
    records summarise: a rate point's steady-state window (its ``<stem>.summary.json``'s
    settings, through :func:`evalkit.stages.latency.derive.steady_trial` as the records),
    every request of a closed-loop point (or of a point whose summary names no window)."""
    stem = point_stem(workload, concurrency, request_rate)
    summary = vdir / f"{stem}.summary.json"
    window = (read_json(summary).get("window")
              if math.isfinite(float(request_rate)) and json_exists(summary) else None)
    out = []
    for f in trial_files(vdir, stem):
        detail = read_json(f.with_suffix("") if f.suffix == ".gz" else f)
        if window and detail.get("start_times"):
            detail = steady_trial(detail, window)[0]
        out.append(per_request_metrics(detail))
    return out


def offline_iters(rows: Iterable[Mapping[str, Any]], batch: int, input_len: int,
                  output_len: int) -> list[Mapping[str, Any]]:
    """The iterations of one offline point among an ``offline.json``'s rows."""
    return [x for x in rows if x["batch_size"] == int(batch)
            and x["input_len"] == int(input_len) and x["output_len"] == int(output_len)]


def point_key(variant: str, mode: str, workload: str, concurrency: int,
              request_rate: float) -> str:
    """Resume unit key of one latency point (:meth:`UnitKey.encode` of its unit)."""
    return UnitKey.latency(variant, mode, workload, concurrency, request_rate).encode()


def request_samples(run_path: str | Path, *, rate_points: bool = True) -> pd.DataFrame:
    """Per-request TTFT, TPOT and E2E latency of every measured point of a run, for
    intervals and SLO attainment (``rate_points=False``: the rate sweeps' points left out,
    their raw files not read).

    Server points: one value per successful request of every trial (from the raw
    per-request files) among those the point's records summarise: a rate point's
    steady-state window (:func:`load_window_trials`), every request of a closed-loop point.
    Offline points: one value per timed iteration (the whole batch's TTFT, TPOT and E2E).
    Columns: variant, mode, workload, concurrency, request_rate, trial, request (index
    within the trial: a request's metrics share it), metric, value. Empty
    when the run has no raw latency data.
    """
    cols = ["variant", "mode", "workload", "concurrency", "request_rate", "trial", "request",
            "metric", "value"]
    root = Path(run_path) / "raw" / STAGE
    frames: list[pd.DataFrame] = []
    offline_rows_of: dict[Path, list[dict[str, Any]]] = {}
    for unit in sorted(root.glob("*/units/*.parquet")):
        pts = rec.read_records(unit)
        pts = pts[pts["mode"].isin(["server", "offline"]) & pts["workload"].notna()]
        if pts.empty:
            continue
        p = pts.iloc[0]
        vdir = unit.parent.parent
        head = dict(variant=str(p["variant"]), mode=str(p["mode"]), workload=str(p["workload"]),
                    concurrency=int(p["concurrency"]), request_rate=float(p["request_rate"]))
        if not rate_points and p["mode"] == "server" and math.isfinite(head["request_rate"]):
            continue
        rows: list[dict[str, Any]] = []
        if p["mode"] == "server":
            trials = load_window_trials(vdir, head["workload"], head["concurrency"],
                                        head["request_rate"])
            for t, m in enumerate(trials):
                for metric in ("ttft_ms", "tpot_ms", "e2el_ms"):
                    rows += [dict(head, trial=t, request=i, metric=metric, value=x)
                             for i, x in enumerate(m[metric])]
        else:
            off = vdir / "offline.json"
            if off not in offline_rows_of:
                offline_rows_of[off] = list(read_json(off)["rows"]) if json_exists(off) else []
            its = offline_iters(offline_rows_of[off], head["concurrency"], p["input_len"],
                                p["output_len"])
            for x in its:
                it = int(x.get("iter", 0))
                for metric, key in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"),
                                    ("e2el_ms", "e2e_s")):
                    if key in x:
                        rows.append(dict(head, trial=it, request=0, metric=metric,
                                         value=x[key] * 1e3))
        if rows:
            frames.append(pd.DataFrame(rows, columns=cols))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
