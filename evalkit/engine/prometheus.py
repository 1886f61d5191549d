"""The server's Prometheus metrics: parsing, scraping, histogram quantiles, before/after deltas."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from evalkit.core.errors import EngineError

#: Histograms read per workload point. vLLM renamed the per-token decode histogram:
#: ``time_per_output_token_seconds`` (older) became ``inter_token_latency_seconds``, with
#: ``request_time_per_output_token_seconds`` holding the per-request TPOT.
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
)


COUNTERS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)


def parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """Parse a Prometheus exposition into ``{name: {...}}``, summed over label sets.

    Histograms become ``{"type": "histogram", "buckets": {le: cumulative}, "sum", "count"}``,
    counters and gauges ``{"type": ..., "value"}`` (counter names keep ``_total``).
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            h = out.setdefault(fam.name, {"type": "histogram", "buckets": {}, "sum": 0.0,
                                          "count": 0.0})
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    h["sum"] += s.value
                elif s.name.endswith("_count"):
                    h["count"] += s.value
        elif fam.type in ("counter", "gauge"):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                m = out.setdefault(s.name, {"type": fam.type, "value": 0.0})
                m["value"] += s.value
    return out


def scrape_metrics(base_url: str, *, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """Read and parse the server's ``/metrics`` (see :func:`parse_metrics`).

    Raises:
        EngineError: the endpoint cannot be read.
    """
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as r:
            text = r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise EngineError(f"cannot read {base_url}/metrics: {exc}") from None
    return parse_metrics(text)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket.

    Args:
        q: quantile in [0, 1].
        buckets: upper bound ``le`` -> cumulative count (must include ``+Inf``).

    Returns:
        The estimate; NaN for an empty histogram. A rank in the ``+Inf`` bucket returns the
        largest finite bound (as Prometheus does).
    """
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return math.nan
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank and c > prev_c:
            if math.isinf(le):
                return prev_le
            if le <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = (le if not math.isinf(le) else prev_le), c
    return prev_le


def metrics_delta(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
    *, quantiles: Sequence[float] = (0.5, 0.9, 0.99),
) -> dict[str, dict[str, float]]:
    """Server-side figures for the requests between two scrapes.

    Histograms give ``count``, ``sum``, ``mean`` (= sum / count, per request or per token as
    the histogram counts) and bucket-interpolated ``p50``/``p90``/``p99``; counters give
    ``value`` (the increase). Everything is NaN where no observation fell between the
    scrapes. Metrics missing from ``after`` are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for name, a in after.items():
        b = before.get(name, {})
        if a["type"] == "histogram":
            bb = b.get("buckets", {}) if b else {}
            buckets = {le: c - bb.get(le, 0.0) for le, c in a["buckets"].items()}
            count = a["count"] - (b.get("count", 0.0) if b else 0.0)
            total = a["sum"] - (b.get("sum", 0.0) if b else 0.0)
            row = {"count": count, "sum": total if count > 0 else math.nan,
                   "mean": total / count if count > 0 else math.nan}
            for q in quantiles:
                row[f"p{q * 100:g}"] = histogram_quantile(q, buckets) if count > 0 else math.nan
            out[name] = row
        elif a["type"] == "counter":
            out[name] = {"value": a["value"] - (b.get("value", 0.0) if b else 0.0)}
    return out
