"""Prompt log-probabilities from ``vllm.LLM`` in a child process
(``python -m evalkit.engine logprobs --spec SPEC.json``).

vLLM returns, per prompt position, the ``k`` most likely next tokens with their
log-probabilities (``SamplingParams(prompt_logprobs=k)``, at most the engine's
``max_logprobs``) plus the prompt's own next token; never the full vocabulary. This module
only collects those numbers; :func:`evalkit.metrics.quality.topk_token_stats` turns two
models' top-k into the approximate KL divergence the definitions page describes. Like
:mod:`~evalkit.engine.offline`, the engine runs in a child process, so its memory goes back
when the variant is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evalkit.core.errors import EngineError
from evalkit.core.io import atomic_write_bytes, atomic_write_json, read_json
from evalkit.core.specs import EngineSpec
from evalkit.engine.checkpoint import check_checkpoint
from evalkit.engine.offline import run_engine_child, shutdown_llm
from evalkit.engine.options import engine_kwargs


def prompt_topk_logprobs(
    model_path: str | Path, *, engine: EngineSpec, sequences: Sequence[Sequence[int]], k: int,
    out_path: Path, log_path: Path, trust_remote_code: bool = False,
    timeout_s: float | None = None,
) -> dict[str, np.ndarray]:
    """Top-k prompt log-probabilities of every position after the first, for each sequence.

    Args:
        model_path: checkpoint directory.
        engine: engine options (``max_logprobs`` is set to ``k``).
        sequences: token ids; every sequence has the same length ``L``.
        k: log-probabilities per position.
        out_path: ``.npz`` file the arrays are written to (atomically).
        log_path: file receiving the child's output.
        trust_remote_code: allow checkpoint code.
        timeout_s: wall-clock limit (default: startup timeout + 30 s per sequence).

    Returns:
        ``ids`` and ``lps``: ``(N, L - 1, k)`` token ids and log-probs (rank order);
        ``target_lps``: ``(N, L - 1)`` the log-prob of each position's actual next token.

    Raises:
        UnsupportedSchemeError: no kernel for the checkpoint here.
        EngineError: the child failed or timed out.
    """
    check_checkpoint(model_path)
    lengths = {len(sequence) for sequence in sequences}
    if len(lengths) != 1:
        raise EngineError(f"prompt logprobs need sequences of one length, got {sorted(lengths)}")
    spec = {"model": str(model_path), "sequences": [list(map(int, sequence)) for sequence in sequences],
            "k": int(k), "out": str(out_path),
            "engine_kwargs": {**engine_kwargs(engine, load_format=None, tokenizer=None,
                                              trust_remote_code=trust_remote_code),
                              "max_logprobs": int(k)}}
    log_path = Path(log_path)
    spec_path = log_path.with_suffix(".spec.json")
    atomic_write_json(spec_path, spec)
    run_engine_child("logprobs", spec_path, engine=engine, log_path=log_path,
                     limit_s=timeout_s if timeout_s is not None
                     else engine.startup_timeout_s + 30 * len(sequences),
                     what=f"vLLM prompt logprobs for {model_path}", model_path=model_path)
    with np.load(out_path) as arrays:
        return {name: arrays[name] for name in ("ids", "lps", "target_lps")}


def logprobs_child(spec_path: Path) -> None:
    """Body of ``python -m evalkit.engine logprobs``: runs inside the child process."""
    import io  # noqa: PLC0415

    from vllm import LLM, SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    spec = read_json(spec_path)
    k = int(spec["k"])
    llm = LLM(model=spec["model"], seed=0, **spec["engine_kwargs"])
    try:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k)
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in spec["sequences"]],
                            params, use_tqdm=False)
    finally:
        shutdown_llm(llm)
    ids, lps, target = [], [], []
    for seq, out in zip(spec["sequences"], outs, strict=True):
        rows_i, rows_l, rows_t = [], [], []
        # entry j holds the distribution that predicted token j; entry 0 is None
        for j, entry in enumerate(out.prompt_logprobs[1:], start=1):
            top = sorted(((lp.rank, tid, lp.logprob) for tid, lp in entry.items()
                          if lp.rank is not None and lp.rank <= k))[:k]
            if len(top) < k:
                raise EngineError(f"vLLM returned {len(top)} of {k} prompt logprobs at {j}")
            rows_i.append([t for _, t, _ in top])
            rows_l.append([v for _, _, v in top])
            rows_t.append(entry[seq[j]].logprob)
        ids.append(rows_i)
        lps.append(rows_l)
        target.append(rows_t)
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(ids, dtype=np.int64), lps=np.asarray(lps, dtype=np.float64),
             target_lps=np.asarray(target, dtype=np.float64))
    atomic_write_bytes(spec["out"], buf.getvalue())
