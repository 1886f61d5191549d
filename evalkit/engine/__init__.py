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

from evalkit.engine.bench import bench_parser
from evalkit.engine.checkpoint import check_checkpoint
from evalkit.engine.energy import EnergyMeter
from evalkit.engine.logparse import classify_failure, jit_events, provenance
from evalkit.engine.logprobs import prompt_topk_logprobs
from evalkit.engine.offline import run_offline
from evalkit.engine.process import log_tail
from evalkit.engine.prometheus import metrics_delta, scrape_metrics
from evalkit.engine.server import VLLMServer
from evalkit.engine.verdict import engine_verdict, record_engine_verdict

#: The verbs and types the stages use; everything else is imported from its module.
__all__ = [
    "EnergyMeter", "VLLMServer", "bench_parser", "check_checkpoint", "classify_failure",
    "engine_verdict", "jit_events", "log_tail", "metrics_delta", "prompt_topk_logprobs",
    "provenance",
    "record_engine_verdict", "run_offline", "scrape_metrics",
]
