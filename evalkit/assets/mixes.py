"""Request mixes: the prompts and output lengths of a latency workload whose lengths vary.

vLLM's ``random`` dataset draws lengths from a uniform range only. A workload with lognormal
or empirical lengths (:class:`~evalkit.core.traffic.Lengths`) is sent instead as a JSONL file
that ``vllm bench serve --dataset-name custom --custom-output-len -1 --skip-chat-template
--disable-shuffle`` reads: one ``{"prompt", "output_tokens"}`` object per request, built here.

Prompt text is real text from the offline task pack. A sampled length is met by cutting a
window of that many tokens out of LAMBADA's book passages, decoding it and re-tokenizing the
prompt as vLLM will (``tokenizer(prompt).input_ids``: BOS included), trimming or extending
the window until the count matches. Empirical lengths are those of real prompts, and the
prompts sent are those documents. Every prompt starts with a nonce line unique to its point,
trial, role and index (counted in its length), so vLLM's prefix cache never serves one
point's prompt from another's; the variants of a study share a nonce and so get the same
prompts (paired measurements).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from evalkit.assets.taskpack import build_task_data
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.io import atomic_write_text
from evalkit.core.traffic import Lengths

if TYPE_CHECKING:
    from evalkit.core.specs import Workload

#: Most documents an empirical source keeps: a fixed sample, since tokenizing is the cost.
MAX_DOCS = 2000
_SAMPLE_SEED = 1729  # the fixed sample's seed (documents, and the passages of rag prompts)


@dataclass(frozen=True)
class Request:
    """One request of a mix. ``prompt_len``: tokens of ``prompt`` as vLLM counts them."""

    prompt: str
    prompt_len: int
    output_tokens: int


@dataclass(frozen=True)
class _Tok:
    """A tokenizer keyed by its name, so work per tokenizer can be cached."""

    key: tuple[str, str, int]
    tok: Any = field(compare=False, repr=False)

    @classmethod
    def of(cls, tok: Any) -> _Tok:
        return cls((str(getattr(tok, "name_or_path", "") or id(tok)), type(tok).__name__,
                    len(tok)), tok)

    def ids(self, texts: Sequence[str], special: bool = True) -> list[list[int]]:
        return list(self.tok(list(texts), add_special_tokens=special).input_ids)

    def counts(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.ids(texts)]


# ------------------------------------------------------------------ task-pack documents


def text_dir() -> Path:
    """The task pack's data directory that request mixes take their prompt text from.

    Raises:
        AssetError: the data is not there (not built, not copied), with the install hint.
    """
    try:
        return build_task_data()
    except AssetError as exc:
        raise AssetError(f"{exc} (request mixes take their prompt text from the task pack; "
                         "text='random' fills synthetic prompts with random tokens instead, "
                         "empirical lengths need the pack)") from None


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".arrow":
        import pyarrow as pa  # noqa: PLC0415

        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_stream(src).read_all().to_pylist()
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _question(text: str, options: Sequence[str] = ()) -> str:
    choices = "".join(f"\n{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))
    return f"Question: {text.strip()}{choices}\nAnswer:"


def _hs(text: str) -> str:  # HellaSwag's WikiHow markup, cleaned the way lm-eval does
    return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")


#: chat prompts: (task, file, rendering of one document)
_CHAT = (
    ("arc_easy", "test.jsonl", lambda d: _question(d["question"], d["choices"]["text"])),
    ("arc_challenge", "test.jsonl", lambda d: _question(d["question"], d["choices"]["text"])),
    ("hellaswag", "validation.arrow",
     lambda d: _question(_hs(f"{d['activity_label']}: {d['ctx']}"), [_hs(e) for e in d["endings"]])),
    ("piqa", "validation.arrow", lambda d: _question(d["goal"], [d["sol1"], d["sol2"]])),
    ("winogrande", "validation.arrow",
     lambda d: _question(d["sentence"], [d["option1"], d["option2"]])),
    ("boolq", "validation.jsonl", lambda d: _question(d["question"].capitalize() + "?")),
)


def _chat_documents(root: Path) -> list[str]:
    present = [(t, root / t / f, render) for t, f, render in _CHAT if (root / t / f).is_file()]
    if not present:
        raise AssetError(f"{root}: no question files ({', '.join(t for t, _, _ in _CHAT)})")
    share, out = MAX_DOCS // len(present), []
    for _, path, render in present:
        rows = _rows(path)
        pick = np.random.default_rng(_SAMPLE_SEED).choice(len(rows), min(share, len(rows)),
                                                          replace=False)
        out += [render(rows[i]) for i in sorted(pick)]
    return out


def _rag_documents(root: Path) -> list[str]:
    rows = _rows(root / "boolq" / "validation.jsonl")
    rng, out = np.random.default_rng(_SAMPLE_SEED), []
    for _ in range(MAX_DOCS):
        pick = rng.choice(len(rows), int(rng.integers(3, 9)), replace=False)
        passages = "\n\n".join(f"Passage {j + 1}: {rows[i]['passage'].strip()}"
                               for j, i in enumerate(pick))
        asked = rows[pick[int(rng.integers(len(pick)))]]["question"]
        out.append("Answer the question using the passages below.\n\n" + passages + "\n\n"
                   + _question(asked.capitalize() + "?"))
    return out


@functools.cache
def _corpus(source: str, side: str, tok: _Tok) -> tuple[tuple[str, ...], np.ndarray]:
    """An empirical source's documents and their token lengths (cached per tokenizer)."""
    root = text_dir()
    if side == "output":
        texts = [r["answer"] for r in _rows(root / "gsm8k" / "test.jsonl")][:MAX_DOCS]
    else:
        texts = _chat_documents(root) if source == "chat" else _rag_documents(root)
    # A prompt's length counts BOS as vLLM does; generated tokens have none.
    lengths = np.array([len(x) for x in tok.ids(texts, special=side == "input")], np.int64)
    lengths.setflags(write=False)
    return tuple(texts), lengths


def empirical_lengths(source: str, side: str, tokenizer: Any) -> np.ndarray:
    """Natural token lengths of real text: ``input`` chat (one task-pack question with its
    choices), ``input`` rag (3 to 8 BoolQ passages and a question), ``output`` chat (GSM8K
    reference solutions)."""
    if source not in ("chat", "rag") or side not in ("input", "output"):
        raise ConfigError(f"empirical lengths: unknown source/side {source}/{side}; allowed: "
                          "chat or rag / input or output")
    if side == "output" and source != "chat":
        raise ConfigError("output lengths: empirical takes source: chat (GSM8K solutions)")
    return _corpus(source, side, _Tok.of(tokenizer))[1]


# ------------------------------------------------------------------ lengths


def _clip(spec: Lengths, lengths: np.ndarray) -> np.ndarray:
    hi = spec.max if spec.max is not None else np.iinfo(np.int64).max
    return np.clip(lengths, spec.min or 1, hi).astype(np.int64)


def sample_lengths(spec: Lengths, centre: int, n: int, rng: np.random.Generator, *,
                   side: Literal["input", "output"], tokenizer: Any = None) -> np.ndarray:
    """``n`` lengths drawn as ``spec`` says around ``centre`` (``tokenizer``: empirical only)."""
    if spec.dist == "fixed":
        out = np.full(n, centre)
    elif spec.dist == "uniform":
        r = float(spec.range_ratio)  # type: ignore[arg-type]
        lo = max(1, math.floor(centre * (1 - r)))
        out = rng.integers(lo, max(lo, math.ceil(centre * (1 + r))) + 1, n)
    elif spec.dist == "lognormal":
        sigma2 = math.log1p((float(spec.sd) / centre) ** 2)  # type: ignore[arg-type]
        out = np.rint(rng.lognormal(math.log(centre) - sigma2 / 2, math.sqrt(sigma2), n))
    else:
        if tokenizer is None:
            raise ValueError("empirical lengths need the tokenizer")
        pool = empirical_lengths(str(spec.source), side, tokenizer)
        out = pool[rng.integers(0, len(pool), n)]
    return _clip(spec, out)


# ------------------------------------------------------------------ prompt text


@functools.cache
def _stream(tok: _Tok) -> np.ndarray:
    """LAMBADA's passages as one token stream (no special tokens)."""
    texts = [r["text"] + "\n\n" for r in _rows(text_dir() / "lambada_openai" / "test.jsonl")]
    return np.concatenate([np.asarray(x, np.int64) for x in tok.ids(texts, special=False)])


@functools.cache
def _plain_ids(tok: _Tok) -> np.ndarray:
    """Vocabulary ids that are neither special nor added tokens (text='random')."""
    skip = set(tok.tok.all_special_ids) | set(tok.tok.get_added_vocab().values())
    return np.setdiff1d(np.arange(len(tok.tok)), np.fromiter(skip, np.int64))


def _filler(tok: _Tok, lengths: Sequence[int], rng: np.random.Generator, text: str
            ) -> list[np.ndarray]:
    """Token ids to cut prompt windows from: ``length`` ids (plus slack) per request."""
    sizes = [int(n) + 16 + int(n) // 4 for n in lengths]
    if text == "random":
        pool = _plain_ids(tok)
        return [pool[rng.integers(0, len(pool), s)] for s in sizes]
    stream = _stream(tok)
    starts = rng.integers(0, len(stream), len(sizes))
    return [np.take(stream, s + np.arange(k), mode="wrap") for s, k in zip(starts, sizes, strict=True)]


def _fit(tok: _Tok, heads: list[str], srcs: list[np.ndarray], targets: list[int],
         tails: list[bool], rounds: int = 8) -> tuple[list[str], list[int]]:
    """Prompts ``head + decode(window)`` of ``targets`` tokens as vLLM counts them.

    The window is the first ``m`` ids of the source (the last ``m`` where ``tails``); a
    decode/encode round trip can merge or split tokens at the cuts, so ``m`` is corrected
    from the count until it matches or repeats. Of equally close prompts, one at or below
    the target is kept (at or above it where ``tails``: a prompt padded up to a minimum).
    """
    n = len(heads)
    m = [max(0, t - h) for t, h in zip(targets, tok.counts(heads), strict=True)]
    tried: list[set[int]] = [set() for _ in range(n)]
    best: list[tuple[tuple[int, bool], str, int]] = [((1 << 62, True), "", 0)] * n
    todo = list(range(n))
    for _ in range(rounds):
        wins = [srcs[i][len(srcs[i]) - m[i]:] if tails[i] and m[i] else srcs[i][:m[i]]
                for i in todo]
        bodies = tok.tok.batch_decode([w.tolist() for w in wins], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
        prompts = [heads[i] + b for i, b in zip(todo, bodies, strict=True)]
        nxt = []
        for i, p, c in zip(todo, prompts, tok.counts(prompts), strict=True):
            t = targets[i]
            key = (abs(c - t), c < t if tails[i] else c > t)
            if key < best[i][0]:
                best[i] = (key, p, c)
            tried[i].add(m[i])
            step = m[i] + t - c
            if c != t and 0 <= step <= len(srcs[i]) and step not in tried[i]:
                m[i] = step
                nxt.append(i)
        if not (todo := nxt):
            break
    return [b[1] for b in best], [b[2] for b in best]


def _documents(tok: _Tok, spec: Lengths, heads: list[str], docs: list[str],
               rng: np.random.Generator, text: str) -> tuple[list[str], list[int]]:
    """Empirical prompts: real documents, cut at ``spec.max`` or led by filler up to ``spec.min``
    (both counted with the nonce line)."""
    prompts = [h + d for h, d in zip(heads, docs, strict=True)]
    lens = tok.counts(prompts)
    lo, hi = spec.min or 1, spec.max or math.inf
    fix = [i for i in range(len(docs)) if not lo <= lens[i] <= hi]
    fillers = _filler(tok, [lo] * len(docs), rng, text) if spec.min else []
    if fix:
        ids = tok.ids([docs[i] for i in fix], special=False)
        gap = tok.ids(["\n\n"], special=False)[0]
        srcs = [np.asarray(x, np.int64) if lens[i] > hi else np.concatenate([fillers[i], gap, x])
                for i, x in zip(fix, ids, strict=True)]
        targets = [int(hi) if lens[i] > hi else lo for i in fix]
        new, counts = _fit(tok, [heads[i] for i in fix], srcs, targets,
                           [lens[i] < lo for i in fix])
        for i, p, c in zip(fix, new, counts, strict=True):
            prompts[i], lens[i] = p, c
    return prompts, lens


def build_requests(workload: Workload, n: int, *, seed: int, tokenizer: Any, nonce: str,
                   text: Literal["taskpack", "random"] = "taskpack") -> list[Request]:
    """The ``n`` requests of one trial of ``workload`` (deterministic for its arguments).

    ``nonce``: unique per point, trial and role, identical across variants; request ``i``'s
    prompt starts with the line ``[nonce-i]``. ``text``: where synthetic prompt text comes
    from: task-pack book passages, or random vocabulary ids decoded (vLLM's random dataset).
    Empirical prompts always come from the task pack.

    Raises:
        AssetError: the task pack is needed and not there.
    """
    if text not in ("taskpack", "random"):
        raise ValueError(f"text: {text!r}; allowed: taskpack, random")
    if not nonce or any(ch.isspace() for ch in nonce):
        raise ValueError(f"nonce: {nonce!r}; a short string without spaces")
    spec = workload.input
    if text == "taskpack" or spec.dist == "empirical" or workload.output.dist == "empirical":
        text_dir()  # fail here, with the hint, rather than inside a cached helper
    tok, rng = _Tok.of(tokenizer), np.random.default_rng(seed)
    heads = [f"[{nonce}-{i}]\n" for i in range(n)]
    if spec.dist == "empirical":
        texts = _corpus(str(spec.source), "input", tok)[0]
        docs = [texts[j] for j in rng.integers(0, len(texts), n)]  # as sample_lengths draws
    else:
        targets = [int(t) for t in sample_lengths(spec, workload.input_len, n, rng, side="input")]
    outputs = sample_lengths(workload.output, workload.output_len, n, rng, side="output",
                             tokenizer=tokenizer)
    if spec.dist == "empirical":
        prompts, lens = _documents(tok, spec, heads, docs, rng, text)
    else:
        prompts, lens = _fit(tok, heads, _filler(tok, targets, rng, text), targets, [False] * n)
    return [Request(p, int(c), int(o)) for p, c, o in zip(prompts, lens, outputs, strict=True)]


# ------------------------------------------------------------------ files and provenance


def write_jsonl(requests: Sequence[Request], path: Path) -> Path:
    """Write the mix for vLLM's ``custom`` dataset (atomically); the name must end in .jsonl."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: vLLM's custom dataset reads only .jsonl files")
    lines = [json.dumps({"prompt": r.prompt, "output_tokens": int(r.output_tokens)},
                        ensure_ascii=False) for r in requests]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def describe(requests: Sequence[Request]) -> dict[str, Any]:
    """Length statistics of a mix for provenance: n and, per side, mean/p10/p50/p90/min/max."""

    def stats(xs: list[int]) -> dict[str, float | int] | None:
        if not xs:
            return None
        a = np.asarray(xs, np.float64)
        p10, p50, p90 = (float(v) for v in np.percentile(a, [10, 50, 90]))
        return {"mean": round(float(a.mean()), 2), "p10": p10, "p50": p50, "p90": p90,
                "min": int(a.min()), "max": int(a.max())}

    return {"n": len(requests), "input": stats([r.prompt_len for r in requests]),
            "output": stats([r.output_tokens for r in requests])}
