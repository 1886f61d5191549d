"""Latency stage: vLLM serving sweeps (TTFT, TPOT, ITL, E2E) for every variant.

Server mode (the main one) starts one OpenAI server per variant and, for each workload x
concurrency x request-rate point, runs vLLM's own benchmark client (``vllm bench serve``)
against it with ``--save-detailed``, ``trials`` times. evalkit's records are recomputed
from the client's per-request data with vLLM's definitions
(:mod:`evalkit.metrics.latency`): TTFT per request; TPOT = (latency - TTFT) /
(output tokens - 1), first token excluded; ITL per streamed chunk; E2E per request.

What makes a point valid (:mod:`evalkit.metrics.validity`) is built in and checked:

* engines start without automatic prefix caching (``engine.prefix_caching``), and every
  point, trial and warm-up sends prompts of its own (:func:`prompt_seed`), so no timed
  prefill can be a cache read;
* each point records the prompt-token cache hit rate the server counted (``/metrics``) or,
  offline, vLLM reported per request; above 1 % the point is ``invalid``;
* each point records how close it came to its physical floors (prefill FLOPs at peak
  tensor throughput, decode bytes at peak bandwidth); below a floor it is ``invalid``.

Failed requests are counted (``failed_requests``), never dropped silently and never
turned into 0 ms. When ``latency.scrape_metrics`` is on, the server's Prometheus
histograms are diffed around each point and recorded beside the client figures
(``mode="server-metrics"``). Offline mode times whole batches through ``vllm.LLM`` (see
:func:`evalkit.engine.run_offline`).

Raw data per variant lives in ``raw/latency/<variant>/``: the client's detailed JSON per
point and trial (``<point>_t<k>.json``; runs before trials existed: ``<point>.json``),
``<point>.summary.json`` (the client's own summaries next to evalkit's figures and the
``/metrics`` delta), ``provenance.json`` (kernels, backend, graphs, versions from the engine
log), ``offline.json``, and one Parquet file per finished point (what resume reuses).


Modules:

- :mod:`~evalkit.stages.latency.stage`: :func:`run_stage` (the sweep over variants, in groups
  of servers) and :func:`measure_on` (one variant's points on a server another stage
  started, through a :class:`~evalkit.stages.serving.VariantSession`);
- :mod:`~evalkit.stages.latency.sweep`: :class:`LatencyStage`, the state of one run (checkpoints,
  points to do, records, failures, record guards);
- :mod:`~evalkit.stages.latency.points`: :class:`Point` and the points of a sweep;
- :mod:`~evalkit.stages.latency.servers`: server mode (:class:`ServerSweep`: start, wait,
  measure, restart, provenance);
- :mod:`~evalkit.stages.latency.trials`: one server point (warm-up, trials, ``/metrics``,
  energy, JIT compilations in the server log);
- :mod:`~evalkit.stages.latency.derive`: a server point's records from its raw files (the
  steady-state window of a rate point), shared with rebuild;
- :mod:`~evalkit.stages.latency.rates`: the rate sweep of a variant and its capacity at the
  SLO;
- :mod:`~evalkit.stages.latency.offline`: offline mode;
- :mod:`~evalkit.stages.latency.rows`: records that are built, not measured (failed points,
  engine start, roofline, floors and validity marks);
- :mod:`~evalkit.stages.latency.client`: the benchmark client side;
- :mod:`~evalkit.stages.latency.raw`: raw file names and readers, unit keys, per-request
  samples;
- :mod:`~evalkit.stages.latency.rebuild`: records and samples from raw data.
"""

from evalkit.stages.latency.points import Point
from evalkit.stages.latency.raw import request_samples
from evalkit.stages.latency.rebuild import rebuild_records, recorded_prefix_caching
from evalkit.stages.latency.stage import (
    finished_variants,
    measure_on,
    raise_for_failures,
    run_stage,
)

__all__ = [
    "Point", "finished_variants", "measure_on", "raise_for_failures", "rebuild_records",
    "recorded_prefix_caching", "request_samples", "run_stage",
]
