"""Names and readers of a latency point's raw files under ``raw/latency/<variant>/`` (per-trial
client JSON, ``offline.json``, unit keys).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evalkit.core.io import read_json
from evalkit.metrics.latency import (
    per_request_metrics,
)

STAGE = "latency"


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _rate_label(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:g}"


def point_stem(workload: str, concurrency: int, request_rate: float) -> str:
    """File stem of one server-mode point's raw data under ``raw/latency/<variant>/``
    (``<stem>.json`` per-request data, ``<stem>.summary.json`` client summary + /metrics)."""
    return f"{workload}_c{int(concurrency)}_r{_rate_label(float(request_rate))}"


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


def offline_iters(rows: Iterable[Mapping[str, Any]], batch: int, input_len: int,
                  output_len: int) -> list[Mapping[str, Any]]:
    """The iterations of one offline point among an ``offline.json``'s rows."""
    return [x for x in rows if x["batch_size"] == int(batch)
            and x["input_len"] == int(input_len) and x["output_len"] == int(output_len)]


def point_key(variant: str, mode: str, workload: str, concurrency: int,
              request_rate: float) -> str:
    """Resume unit key of one latency point."""
    return f"{variant}/{mode}/{workload}/c{concurrency}/r{_rate_label(request_rate)}"


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in _TOKENIZER_FILES)
