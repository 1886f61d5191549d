"""vLLM engine handling: the OpenAI server as a context manager, offline batches, provenance.

Everything that starts vLLM lives in this package, so the accuracy and latency stages share
one way to start an engine, one way to stop it (the whole process group, no orphans), one
reading of its log (which kernels it chose) and one reading of its Prometheus metrics.

Nothing from a study file reaches a shell: commands are argument lists and the server binds
to 127.0.0.1 only.

- :mod:`~evalkit.engine.process`: process groups (start, stop, no orphans, how one ended).
- :mod:`~evalkit.engine.options`: CLI arguments, ``vllm.LLM`` kwargs, environment, cores.
- :mod:`~evalkit.engine.checkpoint`: checks of a checkpoint before an engine starts on it.
- :mod:`~evalkit.engine.logparse`: refusals, error lines and kernels read from the log.
- :mod:`~evalkit.engine.server`: :class:`VLLMServer`.
- :mod:`~evalkit.engine.readiness`: a launched server's readiness, watched from a thread.
- :mod:`~evalkit.engine.prometheus`: ``/metrics`` parsing and deltas.
- :mod:`~evalkit.engine.offline`: offline batches in a child process.
- :mod:`~evalkit.engine.logprobs`: top-k prompt log-probabilities in a child process.
- :mod:`~evalkit.engine.bench`: ``vllm bench serve``'s own parser and ``main``.
- :mod:`~evalkit.engine.verdict`: what a run remembers about an engine that cannot serve.
- :mod:`~evalkit.engine.energy`: GPU board energy of a timed window (NVML).
"""

from evalkit.engine.bench import bench_parser, bench_serve
from evalkit.engine.checkpoint import check_checkpoint
from evalkit.engine.energy import EnergyMeter, EnergyReading
from evalkit.engine.logparse import (
    UNSUPPORTED_PATTERNS,
    classify_failure,
    jit_events,
    provenance,
    strip_log_prefix,
    unsupported_reason,
)
from evalkit.engine.logprobs import prompt_topk_logprobs
from evalkit.engine.offline import run_offline
from evalkit.engine.options import (
    engine_cli_args,
    engine_cores,
    engine_env,
    engine_kwargs,
    kv_cache_bytes,
)
from evalkit.engine.process import group_members, log_tail, stop_process_group
from evalkit.engine.prometheus import (
    COUNTERS,
    HISTOGRAMS,
    histogram_quantile,
    metrics_delta,
    parse_metrics,
    scrape_metrics,
)
from evalkit.engine.server import VLLMServer
from evalkit.engine.verdict import engine_verdict, record_engine_verdict

__all__ = [
    "COUNTERS", "HISTOGRAMS", "UNSUPPORTED_PATTERNS", "EnergyMeter", "EnergyReading",
    "VLLMServer", "group_members", "jit_events", "log_tail",
    "bench_parser",
    "bench_serve", "check_checkpoint", "classify_failure", "engine_cli_args", "engine_cores",
    "engine_env", "engine_kwargs", "engine_verdict", "histogram_quantile", "kv_cache_bytes",
    "metrics_delta", "parse_metrics", "prompt_topk_logprobs", "provenance", "record_engine_verdict",
    "run_offline",
    "scrape_metrics", "stop_process_group", "strip_log_prefix", "unsupported_reason",
]
