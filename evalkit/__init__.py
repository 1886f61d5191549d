"""evalkit: quality-versus-speed evaluation of quantized LLMs.

Stages: :mod:`evalkit.stages.quantize` (llm-compressor), :mod:`evalkit.stages.accuracy`
(lm-eval), :mod:`evalkit.stages.latency` (vLLM), each with ``run_stage(cfg, run) ->
StageResult``; :mod:`evalkit.analysis` joins and plots; the notebooks in ``notebooks/`` call
the cells of :mod:`evalkit.ui.cells`, and :mod:`evalkit.runner` executes them. Shared parts:
:mod:`evalkit.core`, :mod:`evalkit.metrics` (pure), :mod:`evalkit.assets`,
:mod:`evalkit.engine`.
"""

from evalkit.core.config import StudyConfig
from evalkit.core.errors import ConfigError, EvalkitError
from evalkit.core.records import SCHEMA_VERSION, load_runs
from evalkit.core.run import open_run
from evalkit.preflight import load_study

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION", "ConfigError", "EvalkitError", "StudyConfig", "load_runs", "load_study",
    "open_run", "__version__",
]
