"""Distribution distance against the base on held-out text (the study's ``quality`` section).

Why here: it loads every variant's checkpoint with transformers exactly as the accuracy
stage's ``hf`` backend does (:func:`~evalkit.stages.accuracy.backends.hf_device`,
:func:`~evalkit.stages.accuracy.backends.hf_dtype`; compressed-tensors checkpoints are
decompressed by transformers' integration, activation quantization fake-applied), and runs
in the same notebook after lm-eval. Its records carry ``stage = "quality"`` and go to
``records/quality.parquet``.

What it does: builds ``quality.sequences`` windows of ``quality.seq_len`` tokens from the
held-out text (:func:`heldout_sequences`), scores every window with the base (its
full-vocabulary next-token log-probabilities stay in memory), then loads one variant at a
time, scores the same windows and reduces both to per-token KL(base || variant), top-1
agreement and both negative log-likelihoods (:func:`evalkit.metrics.quality.token_stats`). Only these
per-token numbers are kept (``raw/quality/<variant>/tokens.parquet``); the summaries and
bootstrap intervals over sequences come from
:func:`evalkit.metrics.quality.summarize_distances`.

Raw files: ``raw/quality/text.json`` (where the text came from, the token ids of every
window), ``raw/quality/<variant>/tokens.parquet`` (sequence, position, the four per-token
fields). :func:`rebuild_quality_records` recomputes the records from them.
"""

from __future__ import annotations

import gc
import json
import random
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.assets.checkpoints import checkpoint_for
from evalkit.core import records as rec
from evalkit.core.config import StudyConfig
from evalkit.core.environment import env_hardware_label, hardware_label
from evalkit.core.errors import ConfigError, EvalkitError
from evalkit.core.io import atomic_write_bytes, atomic_write_json, read_json
from evalkit.core.run import Run, set_cpu_threads
from evalkit.core.specs import QualitySpec, Variant
from evalkit.core.units import Failure, StageResult, UnitKey
from evalkit.engine import prompt_topk_logprobs
from evalkit.metrics import quality as qm
from evalkit.stages.accuracy.backends import (
    hf_activation_note,
    hf_device,
    hf_dtype,
    offline_env,
)

QUALITY_STAGE = "quality"


def text_label(q: QualitySpec) -> str:
    """The records' ``task`` of the quality rows: the text source's short name."""
    return q.text.removeprefix("taskpack:") if q.text.startswith("taskpack:") else Path(q.text).stem


def _file_texts(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"quality.text: cannot read '{path}' ({exc.strerror or exc}); "
                          "allowed: an existing .txt or .jsonl file") from None
    if path.suffix != ".jsonl":
        return [line for line in raw.splitlines() if line.strip()]
    out = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"quality.text: {path}:{i} is not JSON; allowed: one object per "
                              "line with a 'text' field") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ConfigError(f"quality.text: {path}:{i} has no string 'text' field")
        out.append(obj["text"])
    return out


def heldout_sequences(cfg: StudyConfig, tokenizer: Any) -> tuple[list[list[int]], str]:
    """The token windows every variant is scored on, and where they came from.

    The texts (LAMBADA passages without the study's calibration passages, or the lines of a
    file, in ``quality.seed`` order) are joined with blank lines into one token stream and
    cut into ``quality.sequences`` windows of ``quality.seq_len`` tokens; each window gets
    the tokenizer's BOS in front (when it has one; otherwise it takes one text token more,
    which only conditions). Every text position after BOS is scored (the first from BOS
    alone), so the token budget is exactly ``sequences x seq_len``.

    Raises:
        ConfigError: the text holds fewer tokens than the budget, or the file is unusable.
    """
    q = cfg.quality
    if q is None:
        raise ConfigError("quality: the study has no quality section")
    if q.text.startswith("taskpack:"):
        cal = cfg.quantize.calibration
        exclude = (taskpack.calibration_texts(cal.num_samples, cal.seed)
                   if cal.dataset == "taskpack:lambada_openai" else [])
        texts = taskpack.heldout_texts(exclude, q.seed)
        where = (f"{q.text}: LAMBADA passages without the study's {len(exclude)} calibration "
                 f"passages, seed {q.seed}")
    else:
        texts = _file_texts(Path(q.text))
        random.Random(q.seed).shuffle(texts)
        where = f"{q.text} ({len(texts)} texts, order seed {q.seed})"
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = q.seq_len + (0 if bos else 1)  # without BOS a window's first token is not scored
    need = q.sequences * step
    ids: list[int] = []
    used = 0
    for t in texts:
        if len(ids) >= need:
            break
        ids += tokenizer(t + "\n\n", add_special_tokens=False).input_ids
        used += 1
    if len(ids) < need:
        raise ConfigError(f"quality: the text holds {len(ids)} tokens, sequences x seq_len = "
                          f"{need}; allowed: a budget of at most {len(ids)} tokens")
    seqs = [bos + ids[i * step:(i + 1) * step] for i in range(q.sequences)]
    return seqs, f"{where}; {used} texts, {q.sequences} x {q.seq_len} tokens"


def _load(checkpoint: Path, device: str, trust_remote_code: bool) -> Any:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(
        str(checkpoint), dtype=getattr(torch, hf_dtype(device)),
        trust_remote_code=trust_remote_code)
    return model.to(device).eval()


#: Windows per forward pass: a batch of 4 x 129 tokens halves the time per window on a
#: 2-core CPU against one at a time; its logits (4 x 129 x 262k float32) take ~0.5 GB.
BATCH = 4


def _logprobs(model: Any, seqs: Sequence[Sequence[int]], device: str) -> np.ndarray:
    """``(len(seqs), L - 1, V)`` float32 next-token log-probabilities of equal-length windows
    (the last position, which predicts nothing in the window, dropped)."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        x = torch.tensor([list(s) for s in seqs], dtype=torch.long, device=device)
        logits = model(x).logits[:, :-1].float()
        return torch.log_softmax(logits, dim=-1).cpu().numpy()


def run_quality(cfg: StudyConfig, run: Run) -> StageResult:
    """Score every variant against the base on the held-out windows; write raw files and
    records (``records/quality.parquet``).

    A variant whose checkpoint is missing or fails to load is a failed unit (its records
    have ``status="failed"``); nothing is raised for it. Without a ``quality`` section or a
    base variant, empty records.
    """
    quality_spec = cfg.quality
    base_v = cfg.base_variant
    if quality_spec is None or base_v is None:
        return StageResult(QUALITY_STAGE, rec.empty_records())
    settings = _settings(quality_spec)
    if _finished(cfg, run, settings):
        run.log("quality: already done in this run with these settings; records rebuilt "
                "from raw/quality")
        df = rebuild_quality_records(run)
        return StageResult(QUALITY_STAGE, df)
    device = hf_device(cfg)
    if device == "cpu":
        set_cpu_threads(run, QUALITY_STAGE)
    t0 = time.monotonic()
    with offline_env():
        from transformers import AutoTokenizer  # noqa: PLC0415

        base_ckpt = Path(checkpoint_for(run, base_v.name))
        tok = AutoTokenizer.from_pretrained(str(base_ckpt),
                                            trust_remote_code=cfg.model.trust_remote_code)
        seqs, where = heldout_sequences(cfg, tok)
        atomic_write_json(run.sub("raw", QUALITY_STAGE, "text.json"),
                          {"source": where, "seq_len": quality_spec.seq_len, "sequences": seqs,
                           "bos": tok.bos_token_id, "backend": quality_spec.backend,
                           "top_k": quality_spec.top_k if quality_spec.backend == "vllm" else None,
                           "settings": settings})
        if quality_spec.backend == "vllm":
            tokens, failures = _vllm_tokens(cfg, run, seqs)
            hardware = hardware_label(cfg.engine.device)
            where += f"; vLLM top-{quality_spec.top_k} prompt logprobs (KLD: top-k plus tail bucket)"
        else:
            tokens, failures = _hf_tokens(cfg, run, seqs, device)
            hardware = hardware_label(device)
    for name, per_seq in tokens.items():
        if name in failures:
            continue
        frame = pd.concat([pd.DataFrame({"sequence": i,
                                         "position": np.arange(len(seq_stats["kld_nats"])),
                                         **seq_stats}) for i, seq_stats in enumerate(per_seq)],
                          ignore_index=True)
        atomic_write_bytes(run.sub("raw", QUALITY_STAGE, name, "tokens.parquet"),
                           frame.to_parquet(index=False))
        run.units.mark(UnitKey.quality(name), {"tokens": int(len(frame)), "source": where,
                                               "settings": settings})
    run.log(f"quality: {sum(map(len, seqs)) - len(seqs)} tokens per variant, "
            f"{time.monotonic() - t0:.0f} s")
    df = quality_records(cfg, run,
                         {name: per_seq for name, per_seq in tokens.items() if name not in failures},
                         failures, where, hardware, quality_spec.backend)
    run.write_stage_records(QUALITY_STAGE, df)
    return StageResult(QUALITY_STAGE, df, [Failure(UnitKey.quality(name), "failed", why)
                                           for name, why in failures.items()])


Tokens = dict[str, list[dict[str, np.ndarray]]]


def _settings(q: QualitySpec) -> dict[str, Any]:
    """What the per-token files depend on (the bootstrap only summarizes them)."""
    return q.model_dump(mode="json", exclude={"bootstrap"})


def _finished(cfg: StudyConfig, run: Run, settings: dict[str, Any]) -> bool:
    """Every variant's per-token file is there, marked done under the same settings (a
    resumed run reuses them; the study file cannot change within a run, this guards raw
    files from elsewhere)."""
    for v in cfg.variants:
        done = run.units.done(UnitKey.quality(v.name))
        if done is None or done.get("settings") != settings or not (
                run.path / "raw" / QUALITY_STAGE / v.name / "tokens.parquet").is_file():
            return False
    return (run.path / "raw" / QUALITY_STAGE / "text.json").is_file()


def _hf_tokens(cfg: StudyConfig, run: Run, seqs: Sequence[Sequence[int]],
               device: str) -> tuple[Tokens, dict[str, str]]:
    """Per-token statistics of every variant from full-vocabulary transformers logits.

    The base scores every window once and its log-probabilities stay in memory (float32:
    2048 tokens x 262k vocabulary = 2.1 GB); then one variant at a time is loaded, scored
    and freed, so memory holds one model whatever the number of variants.
    """
    base_v = cfg.base_variant
    if base_v is None:
        raise ConfigError("quality compares every variant with the base: the study has none")
    failures: dict[str, str] = {}
    targets = [np.asarray(seq[1:], dtype=np.int64) for seq in seqs]
    model = _load(Path(checkpoint_for(run, base_v.name)), device,
                  cfg.model.trust_remote_code)
    lb = np.concatenate([_logprobs(model, seqs[i:i + BATCH], device)
                         for i in range(0, len(seqs), BATCH)])
    del model
    gc.collect()
    tokens: Tokens = {base_v.name: [qm.token_stats(lb[j], lb[j], t)
                                    for j, t in enumerate(targets)]}
    others = [v for v in cfg.variants if v.name != base_v.name]
    run.log(f"quality: {len(others)} variant(s) vs {base_v.name}, hf full vocabulary")
    for v in others:
        try:
            ckpt = Path(checkpoint_for(run, v.name))
            model = _load(ckpt, device, cfg.model.trust_remote_code)
            act = hf_activation_note(ckpt, model)  # whether its activations are emulated
            if act:
                run.log(f"quality {v.name}: {act}")
            per_seq = []
            for i in range(0, len(seqs), BATCH):
                lv = _logprobs(model, seqs[i:i + BATCH], device)
                per_seq += [qm.token_stats(lb[i + j], lv[j], targets[i + j])
                            for j in range(len(lv))]
            tokens[v.name] = per_seq
        except Exception as exc:  # noqa: BLE001 -- a failed unit is data
            failures[v.name] = f"{type(exc).__name__}: {exc}".split("\n")[0][:500]
            run.log(f"quality {v.name}: FAILED {exc}\n{traceback.format_exc()}")
        finally:
            model = None
            gc.collect()
    return tokens, failures


def _vllm_tokens(cfg: StudyConfig, run: Run,
                 seqs: Sequence[Sequence[int]]) -> tuple[Tokens, dict[str, str]]:
    """Per-token statistics of every variant from vLLM's top-k prompt logprobs, one engine
    (child process) per variant, the base first."""
    q, base_v = cfg.quality, cfg.base_variant
    if q is None or base_v is None:
        raise ConfigError("quality: the study needs a quality section and a base variant")
    failures: dict[str, str] = {}
    got: dict[str, dict[str, np.ndarray]] = {}
    order = [base_v, *[v for v in cfg.variants if v.name != base_v.name]]
    for v in order:
        try:
            got[v.name] = prompt_topk_logprobs(
                checkpoint_for(run, v.name), engine=cfg.engine, sequences=seqs,
                k=q.top_k, out_path=run.sub("raw", QUALITY_STAGE, v.name, "topk.npz"),
                log_path=run.sub("logs", f"vllm-quality-{v.name}.log"),
                trust_remote_code=cfg.model.trust_remote_code)
            run.log(f"quality {v.name}: vLLM top-{q.top_k} prompt logprobs of {len(seqs)} "
                    "sequences")
        except EvalkitError as exc:
            failures[v.name] = str(exc).split("\n")[0][:500]
            run.log(f"quality {v.name}: FAILED {exc}")
    if base_v.name in failures:  # nothing to compare with
        for v in order[1:]:
            failures.setdefault(v.name, f"no base logprobs: {failures[base_v.name]}")
        return {}, failures
    b = got[base_v.name]
    tokens: Tokens = {}
    for name, g in got.items():
        tokens[name] = [qm.topk_token_stats(b["ids"][i], b["lps"][i], g["ids"][i], g["lps"][i],
                                            np.asarray(seq[1:]), b["target_lps"][i],
                                            g["target_lps"][i])
                        for i, seq in enumerate(seqs)]
    return tokens, failures


def variant_fields(v: Variant) -> dict[str, Any]:
    return {"variant": v.name, "scheme": v.scheme, "method": v.method}


def _estimate_rows(fields: dict[str, Any], metric: str, e: qm.Estimate, unit: str,
                   hib: bool | None, stat: str, note: str) -> list[dict[str, Any]]:
    """``stat`` and its interval (``ci_low``/``ci_high``, prefixed ``<stat>_`` unless the
    stat is ``value`` or ``mean``)."""
    pre = "" if stat in ("value", "mean") else f"{stat}_"
    return [{**fields, "metric": metric, "stat": st, "value": val, "unit": unit,
             "higher_is_better": hib, "n": e.n, "note": note}
            for st, val in ((stat, e.value), (f"{pre}ci_low", e.ci_low),
                            (f"{pre}ci_high", e.ci_high))]


def quality_records(cfg: StudyConfig, run: Run, tokens: dict[str, list[dict[str, np.ndarray]]],
                    failures: dict[str, str], where: str, hardware: str,
                    backend: str = "hf") -> pd.DataFrame:
    """Records of the quality stage from the per-token statistics of each variant.

    Per variant: ``kld_nats`` (``mean``, ``ci_low``, ``ci_high``, ``p99``, ``p99_ci_low``,
    ``p99_ci_high``), ``top1_agreement`` and ``perplexity`` (``value``, ``ci_low``,
    ``ci_high``); the base gets its ``perplexity`` only. ``n`` is the scored tokens; the
    note names the text, the sequences and the bootstrap.
    """
    q = cfg.quality
    if q is None:
        raise ConfigError("quality: the study has no quality section")
    base_v = cfg.base_variant
    boot = q.bootstrap
    task = text_label(q)
    common = {"task": task, "backend": backend, "hardware": hardware, "status": "ok"}
    rows: list[dict[str, Any]] = []
    for name, per_seq in tokens.items():
        v = cfg.variant(name)
        s = qm.summarize_distances(per_seq, resamples=boot.resamples,
                                   confidence=boot.confidence, seed=boot.seed)
        text = (f"on {where}; {s.sequences} sequences, {s.tokens} tokens; bootstrap over "
                f"sequences {boot.resamples}x, {boot.confidence:.0%}")
        note = f"vs {base_v.name if base_v else '?'} {text}"

        fields = {**variant_fields(v), **common}
        if base_v is not None and name == base_v.name:
            rows += _estimate_rows(fields, "perplexity", s.ppl_base, "perplexity", False,
                                   "value", text)
            continue
        rows += _estimate_rows(fields, "kld_nats", s.kld_mean, "nats", False, "mean", note)
        rows += _estimate_rows(fields, "kld_nats", s.kld_p99, "nats", False, "p99", note)
        rows += _estimate_rows(fields, "top1_agreement", s.top1_agreement, "fraction", True,
                               "value", note)
        rows += _estimate_rows(fields, "perplexity", s.ppl_variant, "perplexity", False,
                               "value", note)
    for name, why in failures.items():
        rows.append({**variant_fields(cfg.variant(name)), **common, "metric": "kld_nats",
                     "stat": "mean", "value": float("nan"), "unit": "nats", "status": "failed",
                     "note": why})
    model_name = assets.resolve_model(cfg.model).name
    return rec.make_records(rows, run_id=run.run_id, study=cfg.study, model=model_name,
                            stage=QUALITY_STAGE)


def rebuild_quality_records(run: Run) -> pd.DataFrame:
    """Recompute the quality records of a run from ``raw/quality`` (no model needed).

    Raises:
        EvalkitError: the run has no quality raw files.
    """
    cfg = run.config()
    root = run.path / "raw" / QUALITY_STAGE
    if cfg.quality is None or not (root / "text.json").is_file():
        raise EvalkitError(f"{run.path}: no quality raw files to rebuild records from")
    text = read_json(root / "text.json")
    where, backend = text["source"], text.get("backend", "hf")
    if backend == "vllm":
        where += f"; vLLM top-{text['top_k']} prompt logprobs (KLD: top-k plus tail bucket)"
    tokens: dict[str, list[dict[str, np.ndarray]]] = {}
    for v in cfg.variants:
        f = root / v.name / "tokens.parquet"
        if f.is_file():
            frame = pd.read_parquet(f)
            tokens[v.name] = [{k: g[k].to_numpy() for k in qm.TOKEN_FIELDS}
                              for _, g in frame.groupby("sequence", sort=True)]
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    device = cfg.engine.device if backend == "vllm" else hf_device(cfg)
    df = quality_records(cfg, run, tokens, {}, where, env_hardware_label(env, device), backend)
    run.write_stage_records(QUALITY_STAGE, df)
    return df
