"""Where numbers came from: the GPUs a run could use."""

from __future__ import annotations

from evalkit.rundir import visible_gpus

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
