"""Where numbers came from: the GPUs a run could use."""

from __future__ import annotations

import pandas as pd

from evalkit.core.environment import visible_gpus

ROWS = [{"index": "0", "uuid": "GPU-9f0f", "name": "NVIDIA H200"},
        {"index": "1", "uuid": "GPU-1974", "name": "NVIDIA H200"},
        {"index": "2", "uuid": "GPU-aaaa", "name": "NVIDIA H100 80GB HBM3"}]


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus(ROWS, None) == ROWS
    assert [g["index"] for g in visible_gpus(ROWS, "1")] == ["1"]
    assert [g["index"] for g in visible_gpus(ROWS, "2,0")] == ["2", "0"]  # CUDA's order
    assert [g["index"] for g in visible_gpus(ROWS, "GPU-1974")] == ["1"]
    assert visible_gpus(ROWS, "") == []
    # CUDA ignores everything after the first invalid entry
    assert [g["index"] for g in visible_gpus(ROWS, "0,7,1")] == ["0"]


def test_a_run_resumed_elsewhere_names_every_machine():
    """env.json keeps every stage start with its machine; the report lists them when a run
    spans more than one (a resume on another host or GPU)."""
    from evalkit.analysis import report as rp
    from evalkit.core.environment import machine_id
    from evalkit.ui import sections

    first = {"hostname": "a", "cpu": "Xeon", "gpus": [ROWS[0]]}
    second = {"hostname": "b", "cpu": "Xeon", "gpus": [ROWS[1]]}
    assert machine_id(first) == "host a, Xeon; NVIDIA H200 GPU-9f0f"
    assert machine_id({"hostname": "c", "cpu": "EPYC", "gpus": []}) == "host c, EPYC"

    def report(attempts):
        return rp.Report(records=pd.DataFrame(columns=["stage", "metric", "variant"]),
                         study="s", model="m", hardware="NVIDIA H200", workload=None,
                         concurrency=None, reference=None, env={"attempts": attempts})

    same = [{"stage": "quantize", "started_utc": "t0", **first},
            {"stage": "latency", "started_utc": "t1", **first}]
    assert "more than one machine" not in sections.environment_markdown(report(same))
    moved = [*same, {"stage": "latency", "started_utc": "t2", **second}]
    md = sections.environment_markdown(report(moved))
    assert "more than one machine" in md
    assert "- t2 latency: host b, Xeon; NVIDIA H200 GPU-1974" in md
    assert "- t0 quantize: host a, Xeon; NVIDIA H200 GPU-9f0f" in md


def test_free_cpu_cores_counts_other_work(monkeypatch):
    from evalkit.core import environment as envm

    samples = iter([(1000, 4000), (1000 + 100, 4000 + 200)])  # 1 of 2 cores busy
    monkeypatch.setattr(envm, "_cpu_jiffies", lambda: next(samples))
    monkeypatch.setattr(envm.os, "cpu_count", lambda: 2)
    assert envm.free_cpu_cores(sample_s=0) == 1
    samples = iter([(0, 0), (190, 200)])  # both busy: still one thread, never zero
    monkeypatch.setattr(envm, "_cpu_jiffies", lambda: next(samples))
    assert envm.free_cpu_cores(sample_s=0) == 1
    samples = iter([(0, 0), (4, 200)])  # idle
    monkeypatch.setattr(envm, "_cpu_jiffies", lambda: next(samples))
    assert envm.free_cpu_cores(sample_s=0) == 2
