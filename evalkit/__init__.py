"""evalkit: quality-versus-speed evaluation of quantized LLMs.

Stages: :mod:`evalkit.quantize` (llm-compressor), :mod:`evalkit.accuracy`
(lm-eval), :mod:`evalkit.latency` (vLLM), :mod:`evalkit.report` (join and plots); the
notebooks in ``notebooks/`` call them, :mod:`evalkit.runner` executes the notebooks.
"""

from evalkit.config import StudyConfig
from evalkit.errors import ConfigError, EvalkitError
from evalkit.preflight import load_study
from evalkit.records import SCHEMA_VERSION, load_runs
from evalkit.rundir import open_run

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION", "ConfigError", "EvalkitError", "StudyConfig", "load_runs", "load_study",
    "open_run", "__version__",
]
