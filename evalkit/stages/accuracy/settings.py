"""What every variant is evaluated with (identical settings, written into every cache key), and
the labels and units of lm-eval's metrics.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from evalkit.core.config import StudyConfig
from evalkit.core.errors import StageError
from evalkit.core.specs import AccuracySpec

STAGE = "accuracy"


#: Bump when the cached files or their meaning change; old entries are then ignored.
CACHE_FORMAT = 1


#: lm-eval metrics whose values are fractions in [0, 1].
FRACTION_METRICS = frozenset(
    {"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "f1", "contains"}
)


#: Requests to the vLLM server: retries and per-request timeout (s) on a slow CPU.
API_MAX_RETRIES = 3


API_TIMEOUT_S = 600


SCORE_COLUMNS = ["subtask", "doc_id", "doc_hash", "filter", "metric", "score"]


def metric_unit(name: str, binary: bool) -> str:
    """Unit of a metric: ``fraction`` for accuracy-like ones, else a descriptive word."""
    if binary or name in FRACTION_METRICS:
        return "fraction"
    if "perplexity" in name:
        return "perplexity"
    if name in ("bits_per_byte",):
        return "bits/byte"
    return "score"


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def eval_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The lm-eval settings applied to every variant (part of every cache key)."""
    acc = accuracy_spec(cfg)
    # requests_per_call joins the key only where it is set: the keys of runs made before it
    # existed (one request per call) stay valid.
    per_call = {"requests_per_call": acc.requests_per_call} if acc.requests_per_call > 1 else {}
    return {
        "data": acc.data,
        "num_fewshot": acc.num_fewshot,
        "limit": acc.limit,
        "seed": acc.seed,
        "apply_chat_template": acc.apply_chat_template,
        "batch_size": acc.batch_size,
        "max_gen_toks": acc.max_gen_toks,
        "max_length": cfg.engine.max_model_len,
        "bootstrap_iters": acc.bootstrap.resamples,
        **per_call,
    }


def accuracy_spec(cfg: StudyConfig) -> AccuracySpec:
    """The study's accuracy section; a StageError when the study has none."""
    if cfg.accuracy is None:
        raise StageError(f"study {cfg.study} has no 'accuracy' section; nothing to evaluate")
    return cfg.accuracy
