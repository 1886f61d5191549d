"""evalkit.engine.prometheus: parsing vLLM's /metrics exposition and the delta over a
point's window."""

from __future__ import annotations

import math

import pytest

from evalkit.engine import prometheus as P


def _prom(ttft_buckets, ttft_sum, success, gen_tokens):
    """A Prometheus exposition shaped like vLLM's (two label sets for the counter)."""
    les = ["0.001", "0.01", "0.1", "1.0", "+Inf"]
    lines = ["# HELP vllm:time_to_first_token_seconds Histogram of time to first token.",
             "# TYPE vllm:time_to_first_token_seconds histogram"]
    for le, c in zip(les, ttft_buckets, strict=True):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",'
                     f'model_name="m"}} {c}')
    lines += [
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft_buckets[-1]}',
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft_sum}',
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} '
        f'{success}',
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0',
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen_tokens}',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 0.0',
    ]
    return "\n".join(lines) + "\n"


def test_metrics_delta_on_synthetic_exposition():
    before = P.parse_metrics(_prom([0, 1, 2, 2, 2], 0.011, 2, 32))
    # 10 new requests: 4 in (0.01, 0.1], 6 in (0.1, 1.0]
    after = P.parse_metrics(_prom([0, 1, 6, 12, 12], 0.011 + 3.2, 12, 192))
    d = P.metrics_delta(before, after)
    t = d["vllm:time_to_first_token_seconds"]
    assert t["count"] == 10 and t["mean"] == pytest.approx(0.32)
    # rank 5 of 10: 4 below 0.1, 1 of 6 into (0.1, 1.0] -> 0.1 + 0.9 / 6
    assert t["p50"] == pytest.approx(0.1 + 0.9 * 1 / 6)
    assert t["p90"] == pytest.approx(0.1 + 0.9 * 5 / 6)
    assert d["vllm:request_success_total"]["value"] == 10  # summed over finish reasons
    assert d["vllm:generation_tokens_total"]["value"] == 160
    assert "vllm:num_requests_running" not in d  # gauges have no delta


def test_metrics_delta_empty_window_is_nan():
    s = P.parse_metrics(_prom([0, 1, 2, 2, 2], 0.011, 2, 32))
    t = P.metrics_delta(s, s)["vllm:time_to_first_token_seconds"]
    assert t["count"] == 0 and math.isnan(t["mean"]) and math.isnan(t["p99"])


def test_histogram_quantile_like_prometheus():
    b = {0.1: 5.0, 0.2: 10.0, math.inf: 10.0}
    assert P.histogram_quantile(0.5, b) == pytest.approx(0.1)
    assert P.histogram_quantile(0.75, b) == pytest.approx(0.15)
    # rank in the +Inf bucket -> largest finite bound
    assert P.histogram_quantile(0.99, {0.1: 5.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert math.isnan(P.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))
