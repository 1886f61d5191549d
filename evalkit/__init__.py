"""evalkit: quality-versus-speed evaluation of quantized LLMs.

Stages: :mod:`evalkit.stages.quantize` (llm-compressor), :mod:`evalkit.stages.accuracy`
(lm-eval), :mod:`evalkit.stages.latency` (vLLM), each with ``run_stage(cfg, run) ->
StageResult``; :mod:`evalkit.analysis` joins and plots; the notebooks in ``notebooks/`` call
the cells of :mod:`evalkit.ui.cells`, and :mod:`evalkit.runner` executes them (the variants
as Ray tasks through :mod:`evalkit.cluster`). Shared parts: :mod:`evalkit.core`,
:mod:`evalkit.metrics` (pure), :mod:`evalkit.assets`, :mod:`evalkit.engine`.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The package's verbs and types, each loaded from its module on first use, so that
#: ``import evalkit`` (and ``import evalkit.core.errors``) loads neither pandas nor an engine.
_HOMES = {
    "SCHEMA_VERSION": "evalkit.core.records",
    "ConfigError": "evalkit.core.errors",
    "EvalkitError": "evalkit.core.errors",
    "StudyConfig": "evalkit.core.config",
    "load_runs": "evalkit.core.records",
    "load_study": "evalkit.preflight",
    "open_run": "evalkit.core.run",
    "run_study": "evalkit.runner",
}

__all__ = [
    "SCHEMA_VERSION", "ConfigError", "EvalkitError", "StudyConfig", "__version__", "load_runs",
    "load_study", "open_run", "run_study",
]

if TYPE_CHECKING:
    from evalkit.core.config import StudyConfig
    from evalkit.core.errors import ConfigError, EvalkitError
    from evalkit.core.records import SCHEMA_VERSION, load_runs
    from evalkit.core.run import open_run
    from evalkit.preflight import load_study
    from evalkit.runner import run_study


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")
