"""The pipeline stages, in order: quantize (llm-compressor), accuracy (lm-eval), latency
(vLLM). Each module's ``run_stage(cfg, run)`` returns a :class:`evalkit.core.units.StageResult`."""
