"""A tiny random-weight Llama checkpoint for engine tests, built offline in seconds.

The tokenizer is a byte-level BPE trained on a few sentences with the ``tokenizers``
library, so no hub access and no packaged model are needed. Weights are random: the
checkpoint is for exercising engines (start, serve, stop, time), never for quality.
"""

from __future__ import annotations

import os
from pathlib import Path

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantized language models trade accuracy for speed and memory.",
    "Time to first token and time per output token describe serving latency.",
    "A server answers many concurrent requests; a batch runs them all at once.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}",
] * 20


def tiny_dir() -> Path:
    root = Path(os.environ.get("EVALKIT_CACHE", Path.home() / ".cache" / "evalkit"))
    return root / "test-models" / "tiny-llama-h256-l2"


def build_tiny_llama(path: Path | None = None) -> Path:
    """Build (once) and return a 2-layer, hidden-256 LlamaForCausalLM checkpoint directory."""
    path = Path(path or tiny_dir())
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(path)
    return path



#: compressed-tensors W4A16, the fields of llm-compressor's config that vLLM reads (int4
#: weights in groups of 128, symmetric, packed; the output head left in bf16)
W4A16_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized",
    "quantization_status": "compressed", "ignore": ["lm_head"], "kv_cache_scheme": None,
    "config_groups": {"group_0": {
        "targets": ["Linear"], "format": "pack-quantized", "input_activations": None,
        "output_activations": None,
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                    "group_size": 128, "dynamic": False, "actorder": None},
    }},
}


def build_tiny_cohere2(path: Path, *, w4a16: bool = False) -> Path:
    """A weightless Command A in miniature, for vLLM's ``load_format="dummy"``.

    The ``command-a`` preset's config (Cohere2: parallel attention and MLP, tied embeddings,
    three sliding-window layers for every global one) with 8 layers, hidden 256, 4 query and
    2 KV heads of 64, a window of 512 tokens and the tiny Llama's 512-token vocabulary and
    tokenizer; ``w4a16`` adds :data:`W4A16_CONFIG`. Config and tokenizer only, as a preset's
    checkpoint is.
    """
    import json
    import shutil

    from evalkit.assets.presets import preset_config

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    cfg = preset_config("command-a")
    layers = 8
    cfg.update(hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=512,
               sliding_window=512, layer_types=cfg["layer_types"][:layers],
               max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if w4a16:
        cfg["quantization_config"] = W4A16_CONFIG
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    llama = build_tiny_llama()
    for f in llama.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    tmp.rename(path)
    return path

if __name__ == "__main__":
    print(build_tiny_llama())
