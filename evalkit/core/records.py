"""Tidy long-format result records.

One row per variant x task/workload x metric x statistic. Every stage returns a DataFrame
built by :func:`make_records`, which fills the schema's columns, checks units and types, and
stamps the schema version. :func:`write_records` writes Parquet atomically;
:func:`load_runs` reads one or several run directories into one DataFrame.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.core.errors import EvalkitError
from evalkit.core.io import atomic_write_bytes

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = "1.4"
#: Versions this code reads: 1.1 added the ``invalid`` status (a latency point whose
#: validity checks failed, see evalkit.metrics.validity); 1.2 made ``mode`` a latency column;
#: 1.3 added ``load`` (a server point's load pattern) and the ``capacity`` mode; 1.4 added the
#: ``quality`` stage (KL divergence, top-1 agreement and perplexity vs base on held-out text)
#: and the accuracy flip statistics (``c2w``, ``w2c``, ``flip_rate``, ... with intervals), new
#: rows only. Older files are read as 1.4 (``load`` empty, no quality rows).
READABLE_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4")

#: column -> (dtype, description). Order is the on-disk column order.
COLUMNS: dict[str, tuple[str, str]] = {
    "schema_version": ("string", "records schema version"),
    "run_id": ("string", "run directory id"),
    "study": ("string", "study name"),
    "model": ("string", "model name"),
    "variant": ("string", "variant name from the study file"),
    "scheme": ("string", "scheme registry name (base, w4a16, w4a8_fp8, ...)"),
    "method": ("string", "quantization method (none, rtn, gptq, awq)"),
    "stage": ("string", "quantize | accuracy | quality | latency"),
    "task": ("string", "lm-eval task (accuracy rows), held-out text source (quality rows), "
             "else empty"),
    "workload": ("string", "latency workload name, else empty"),
    "mode": ("string", "how a latency row was measured: server | offline | server-metrics | "
             "startup | roofline | capacity; empty on other stages (the engine is in backend)"),
    "load": ("string", "load pattern of a server point: burst (closed loop, identical "
             "requests) | closed (closed loop, lengths vary) | poisson | gamma (arrivals at "
             "request_rate); offline points: batch; else empty"),
    "metric": ("string", "metric name, unit in the name where it has one (ttft_ms)"),
    "stat": ("string", "value | stderr | mean | p50 | p90 | p99 | ci_low | ci_high | "
              "p50_ci_low | p50_ci_high | trial_spread_pct | ..."),
    "value": ("float64", "the number; NaN where it cannot be computed, never 0"),
    "unit": ("string", "unit of value (ms, tok/s, fraction, bytes, s, %, count, nats, "
             "perplexity)"),
    "higher_is_better": ("boolean", "direction of the metric; NA where it has none"),
    "concurrency": ("Int64", "max concurrent requests / batch size (latency)"),
    "request_rate": ("float64", "request rate in req/s, inf = all at once (latency)"),
    "input_len": ("Int64", "prompt tokens (latency)"),
    "output_len": ("Int64", "generated tokens (latency)"),
    "n": ("Int64", "number of observations behind the value (documents, requests)"),
    "backend": ("string", "engine that produced it (vllm, hf, llm-compressor)"),
    "hardware": ("string", "device the number was measured on"),
    "status": ("string", "ok | unsupported | failed | invalid (a latency point that failed "
                "its validity checks: prefix-cache hits, below a physical floor)"),
    "note": ("string", "reason for a non-ok status, caveats"),
}

STAGES = ("quantize", "accuracy", "quality", "latency")
STATUSES = ("ok", "unsupported", "failed", "invalid")


class RecordsError(EvalkitError):
    """Records do not satisfy the schema."""


def make_records(rows: Iterable[Mapping[str, Any]], **common: Any) -> pd.DataFrame:
    """Build a schema-conforming DataFrame.

    Args:
        rows: dicts with at least variant, stage, metric, stat, value, unit.
        **common: values applied to every row unless the row sets them (run_id, study, ...).

    Raises:
        RecordsError: unknown column, bad stage/status, or a row missing required fields.
    """
    import pandas as pd  # noqa: PLC0415 -- the ground floor loads without pandas

    data = [{**common, **r} for r in rows]
    unknown = {k for r in data for k in r} - set(COLUMNS)
    if unknown:
        raise RecordsError(f"unknown record columns: {sorted(unknown)}")
    df = pd.DataFrame(data, columns=list(COLUMNS))
    df["schema_version"] = SCHEMA_VERSION
    df["status"] = df["status"].astype("object").where(df["status"].notna(), "ok")
    for col, (dtype, _) in COLUMNS.items():
        if dtype == "float64":
            df[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
        else:
            df[col] = df[col].astype(dtype)
    for col in ("variant", "stage", "metric", "stat", "unit"):
        if df[col].isna().any():
            raise RecordsError(f"records need '{col}' on every row")
    bad = set(df["stage"]) - set(STAGES)
    if bad:
        raise RecordsError(f"stage must be one of {STAGES}, got {sorted(bad)}")
    bad = set(df["status"]) - set(STATUSES)
    if bad:
        raise RecordsError(f"status must be one of {STATUSES}, got {sorted(bad)}")
    return df


def empty_records() -> pd.DataFrame:
    return make_records([])


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is ``ok`` (a missing status counts as ok)."""
    return df[df["status"].fillna("ok") == "ok"]


def write_records(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write records as Parquet atomically (temporary file, fsync, rename)."""
    p = Path(path)
    if list(df.columns) != list(COLUMNS):
        raise RecordsError(f"columns differ from schema {SCHEMA_VERSION}: {list(df.columns)}")
    buf = df.to_parquet(index=False)
    atomic_write_bytes(p, buf)
    return p


def read_records(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one records file, checking its schema version."""
    import pandas as pd  # noqa: PLC0415 -- the ground floor loads without pandas

    df = pd.read_parquet(path)
    versions = set(df["schema_version"].dropna().unique()) if len(df) else {SCHEMA_VERSION}
    if versions - set(READABLE_VERSIONS):
        raise RecordsError(f"{path}: schema version {sorted(versions)}, this evalkit reads "
                           f"{', '.join(READABLE_VERSIONS)}")
    old = df["schema_version"].isin(("1.0", "1.1")) & (df["stage"] == "accuracy")
    if old.any():  # 1.2: mode is a latency column; the backend stays in "backend"
        df["mode"] = df["mode"].astype("string").mask(old.to_numpy(), pd.NA)
    if "load" not in df.columns:  # before 1.3
        df.insert(list(COLUMNS).index("load"), "load", pd.Series(pd.NA, index=df.index,
                                                                 dtype="string"))
    return df


def load_runs(*run_dirs: str | os.PathLike[str]) -> pd.DataFrame:
    """Load the records of one or several runs into one DataFrame.

    Accepts run directories (reads ``records.parquet``, else the per-stage files under
    ``records/``) or Parquet files.
    """
    import pandas as pd  # noqa: PLC0415 -- the ground floor loads without pandas

    frames = []
    for d in run_dirs:
        p = Path(d)
        if p.is_file():
            frames.append(read_records(p))
        elif (p / "records.parquet").is_file():
            frames.append(read_records(p / "records.parquet"))
        elif (p / "records").is_dir():
            frames.extend(read_records(f) for f in sorted((p / "records").glob("*.parquet")))
        else:
            raise RecordsError(f"{p}: no records.parquet or records/ (is it a run directory?)")
    if not frames:
        return empty_records()
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)


KEY = ["run_id", "variant", "stage", "task", "workload", "mode", "metric", "stat",
       "concurrency", "request_rate", "input_len", "output_len"]


def combine(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate record frames, keeping the last row for each key (no duplicates)."""
    import pandas as pd  # noqa: PLC0415 -- the ground floor loads without pandas

    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return empty_records()
    df = pd.concat(frames, ignore_index=True)
    keys = df[KEY].astype("string").fillna("<NA>")
    return df.loc[~keys.duplicated(keep="last")].reset_index(drop=True)


def percentile_rows(
    values: Iterable[float], *, metric: str, unit: str, higher_is_better: bool,
    stats: tuple[str, ...] = ("mean", "p50", "p90", "p99"), **fields: Any,
) -> list[dict[str, Any]]:
    """Summary rows for a sample: mean and percentiles; NaN (not 0) for an empty sample.

    Percentiles use numpy's linear interpolation, as vLLM's benchmark does.
    """
    import numpy as np  # noqa: PLC0415 -- the ground floor loads without numpy

    arr = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    rows = []
    for s in stats:
        if arr.size == 0:
            val = float("nan")
        elif s == "mean":
            val = float(arr.mean())
        elif s == "std":
            val = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
        elif s.startswith("p"):
            val = float(np.percentile(arr, float(s[1:])))
        else:
            raise RecordsError(f"unknown statistic {s}")
        rows.append(dict(metric=metric, stat=s, value=val, unit=unit,
                         higher_is_better=higher_is_better, n=int(arr.size), **fields))
    return rows
