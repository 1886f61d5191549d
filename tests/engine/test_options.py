"""evalkit.engine.options: what an engine's environment pins (CPU cores) and passes."""

from __future__ import annotations

from evalkit.core.specs import EngineSpec


def test_cpu_engines_run_on_the_cores_other_work_leaves_free(monkeypatch):
    from evalkit.engine import options

    monkeypatch.setattr(options, "_free_cores", lambda: [0])  # one of two cores busy elsewhere
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    env = options.engine_env(EngineSpec(device="cpu"))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert options.engine_cores(EngineSpec(device="cuda")) is None
    monkeypatch.setattr(options, "_free_cores", lambda: None)  # all free: vLLM's own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in options.engine_env(EngineSpec(device="cpu"))
