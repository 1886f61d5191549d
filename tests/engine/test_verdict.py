"""evalkit.engine.verdict: what a run remembers about an engine that refused a variant is
read back by the next stage (so it does not pay another engine start to hear it again)."""

from __future__ import annotations

from evalkit.core.config import StudyConfig
from evalkit.core.run import create_run
from evalkit.engine.verdict import engine_verdict, record_engine_verdict


def test_verdict_round_trip(tmp_path):
    cfg = StudyConfig.model_validate({
        "study": "v", "model": {"source": "preset", "name": "llama-3.1-8b"},
        "variants": [{"name": "w4a8_fp8", "scheme": "w4a8_fp8"}],
        "latency": {"workloads": [{"name": "w", "input_len": 8, "output_len": 4}],
                    "concurrency": [1]},
        "output_root": str(tmp_path)})
    source = tmp_path / "study.yaml"
    source.write_text("study: v\n")
    run = create_run(cfg, source, "r1")
    assert engine_verdict(run, "w4a8_fp8") is None
    record_engine_verdict(run, "w4a8_fp8", "unsupported", "no CPU kernel for W4A8-FP8",
                          "accuracy")
    got = engine_verdict(run, "w4a8_fp8")
    assert got is not None and got["status"] == "unsupported"
    assert got["reason"] == "no CPU kernel for W4A8-FP8" and got["stage"] == "accuracy"
