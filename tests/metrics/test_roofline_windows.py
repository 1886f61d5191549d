"""Parameter counts and sliding-window attention in the roofline floors.

The Command A count is written out from the architecture (Cohere2: parallel attention and MLP
off one LayerNorm, tied embeddings); the presets are checked against the module tree
transformers builds from each config on the meta device (no memory); the sliding-window
figures use a toy shape small enough to count by hand.
"""

from __future__ import annotations

import math

import pytest

from evalkit.assets.presets import PRESETS_DIR, list_presets, preset_config
from evalkit.metrics import roofline as R
from evalkit.metrics import validity as V

COMMAND_A = preset_config("command-a")


def test_command_a_is_cohere2_with_three_sliding_layers_per_global_one():
    c = COMMAND_A
    assert c["architectures"] == ["Cohere2ForCausalLM"] and c["model_type"] == "cohere2"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
            c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
            c["vocab_size"]) == (12288, 36864, 64, 96, 8, 128, 256000)
    assert c["tie_word_embeddings"] is True and c["rope_theta"] == 50000.0
    windows = R.attention_windows(c)
    assert windows == [None if (i + 1) % 4 == 0 else 4096 for i in range(64)]
    # older readers derive the layer types from the pattern: both spellings agree
    legacy = {k: v for k, v in c.items() if k != "layer_types"}
    assert R.attention_windows(legacy) == windows


def test_command_a_parameter_count_from_the_architecture():
    h, inter, layers, heads, kv, hd, vocab = 12288, 36864, 64, 96, 8, 128, 256000
    embedding = vocab * h  # tied: the LM head is this matrix read back, counted once
    attention = h * heads * hd + 2 * h * kv * hd + heads * hd * h  # q, k, v, o
    mlp = 3 * h * inter  # gate, up, down
    norm = h  # one LayerNorm (weight only) feeds attention and MLP in parallel
    expected = embedding + layers * (attention + mlp + norm) + h  # + the final norm
    assert expected == 111_057_580_032  # ~111.06 B: "111B" on the model card
    assert R.parameter_count(COMMAND_A) == expected
    # int4 linears with one bf16 scale per group of 128; embedding and norms stay bf16
    linear = layers * (attention + mlp)
    w4 = linear // 2 + linear // 128 * 2 + (embedding + layers * norm + h) * 2
    assert R.estimate_weight_bytes(COMMAND_A, "w4a16") == w4
    assert R.estimate_weight_bytes(COMMAND_A, "w4a8_fp8") == w4
    assert 57 * 2**30 < w4 < 58 * 2**30  # 57.7 GiB (61.9 GB) of weights
    assert R.estimate_weight_bytes(COMMAND_A, "base") > 200e9  # bf16: no single GPU holds it
    assert R.active_linear_params(COMMAND_A) == layers * (attention + mlp)


@pytest.mark.parametrize("name", list_presets())
def test_preset_parameter_count_matches_the_transformers_model(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.from_pretrained(str(PRESETS_DIR / name))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    # parameters() yields a tied embedding once
    assert R.parameter_count(preset_config(name)) == sum(p.numel() for p in model.parameters())


# ---- sliding windows, by hand ---------------------------------------------------------

#: 4 layers, the 4th global, the others sliding over 4 tokens; one KV head of dim 2, so one
#: token takes 2 (K, V) x 1 x 2 x 2 bytes = 8 bytes in each layer.
TOY = dict(model_type="cohere2", hidden_size=4, intermediate_size=8, num_hidden_layers=4,
           num_attention_heads=2, num_key_value_heads=1, head_dim=2, vocab_size=16,
           sliding_window=4, sliding_window_pattern=4)
TOY_GLOBAL = {**TOY, "sliding_window": None}


def test_windows_from_layer_types_pattern_or_window():
    assert R.attention_windows(TOY) == [4, 4, 4, None]
    assert R.attention_windows({**TOY, "layer_types": ["full_attention", "sliding_attention",
                                                       "full_attention", "sliding_attention"]}
                               ) == [None, 4, None, 4]
    mistral = {k: v for k, v in TOY.items() if k != "sliding_window_pattern"}
    assert R.attention_windows(mistral) == [4, 4, 4, 4]  # a bare window slides every layer
    assert R.attention_windows({**mistral, "use_sliding_window": False}) == [None] * 4
    assert R.attention_windows(TOY_GLOBAL) == [None] * 4
    # Qwen2.5 carries a window it does not use; Llama has none
    assert set(R.attention_windows(preset_config("qwen2.5-7b"))) == {None}
    assert set(R.attention_windows(preset_config("llama-3.1-8b"))) == {None}


def test_kv_bytes_of_a_long_context_stop_growing_in_sliding_layers():
    # 10 tokens: 3 sliding layers x 4 tokens x 8 B + 1 global layer x 10 tokens x 8 B
    assert R.kv_bytes_per_sequence(TOY, 10) == 3 * 4 * 8 + 10 * 8 == 176
    assert R.kv_bytes_per_sequence(TOY_GLOBAL, 10) == 4 * 10 * 8 == 320
    # within the window every layer holds every token
    assert R.kv_bytes_per_sequence(TOY, 3) == R.kv_bytes_per_sequence(TOY_GLOBAL, 3) == 96
    assert R.kv_bytes_per_token(TOY) == R.kv_bytes_per_token(TOY_GLOBAL) == 32
    assert R.kv_bytes_per_token(TOY, context_tokens=10) == pytest.approx(17.6)


def test_prefill_attention_flops_of_sliding_layers():
    # 2 matmuls x 2 FLOP x 2 heads x head_dim 2 = 16 FLOP per (query, key) pair and layer.
    # 10 tokens: a global layer has 10^2 / 2 = 50 pairs, a window of 4 has 10 x 4 - 4^2 / 2
    # = 32 (the integral of min(t, 4) from 0 to 10)
    _, att = R.prefill_flops(TOY, 10)
    assert att == 16 * (3 * 32 + 50) == 2336
    assert R.prefill_flops(TOY_GLOBAL, 10)[1] == 16 * 4 * 50 == 3200
    # up to the window the two are the same model; two sequences cost twice one
    assert R.prefill_flops(TOY, 4)[1] == R.prefill_flops(TOY_GLOBAL, 4)[1] == 16 * 4 * 8
    assert R.prefill_flops(TOY, 10, sequences=2)[1] == 2 * 2336
    # linear FLOPs do not depend on the attention pattern
    assert R.prefill_flops(TOY, 10)[0] == R.prefill_flops(TOY_GLOBAL, 10)[0]


def test_command_a_floors_past_the_window():
    all_global = {k: v for k, v in COMMAND_A.items()
                  if k not in ("layer_types", "sliding_window_pattern")} | {"sliding_window": None}
    per_layer_token = 2 * 8 * 128 * 2  # K and V, 8 KV heads of 128, bf16: 4 KiB
    # 1024-token prompts sit inside the window: the same as an all-global model
    assert R.prefill_flops(COMMAND_A, 1024) == R.prefill_flops(all_global, 1024)
    assert R.kv_bytes_per_sequence(COMMAND_A, 1024) == 64 * 1024 * per_layer_token
    # 16k tokens: 48 sliding layers hold 4096 tokens, 16 global ones all 16384
    assert R.kv_bytes_per_sequence(COMMAND_A, 16384) == per_layer_token * (
        48 * 4096 + 16 * 16384)
    pairs = 48 * (16384 * 4096 - 4096**2 / 2) + 16 * 16384**2 / 2
    assert R.prefill_flops(COMMAND_A, 16384)[1] == 4 * 96 * 128 * pairs
    # so both floors drop below the all-global model's, and stay positive
    kw = dict(scheme="w4a16", hardware="NVIDIA H200", weight_bytes=62e9, bandwidth_gbps=4800.0,
              bandwidth_is_peak=True)
    ca, glob = V.FloorModel(config=COMMAND_A, **kw), V.FloorModel(config=all_global, **kw)
    assert 0 < ca.tpot_floor_ms(16384, 64)[0] < glob.tpot_floor_ms(16384, 64)[0]
    assert 0 < ca.ttft_floor_ms(16384, 1)[0] < glob.ttft_floor_ms(16384, 1)[0]
    assert ca.tpot_floor_ms(1024, 64)[0] == glob.tpot_floor_ms(1024, 64)[0]
    # the decode floor of batch 64 at 16k: 62 GB of weights + 64 x 1.88 GB of KV (4.29 GB
    # if every layer were global: 7/16 of it) at 4.8 TB/s
    kv = R.kv_bytes_per_sequence(COMMAND_A, 16384)
    assert kv / R.kv_bytes_per_sequence(all_global, 16384) == 7 / 16
    assert math.isclose(kv / 1e9, 1.879, rel_tol=1e-3)
    assert ca.tpot_floor_ms(16384, 64)[0] == pytest.approx((62e9 + 64 * kv) / 4800e9 * 1e3)


def test_gemma3_windows_move_only_long_prompts():
    gemma = dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048,
                 num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                 head_dim=256, vocab_size=262144, sliding_window=512, tie_word_embeddings=True,
                 layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)
    assert R.attention_windows(gemma).count(None) == 3
    flat = {**gemma, "sliding_window": None}
    assert R.prefill_flops(gemma, 512) == R.prefill_flops(flat, 512)
    assert R.prefill_flops(gemma, 2048)[1] < R.prefill_flops(flat, 2048)[1]
    assert R.kv_bytes_per_sequence(gemma, 2048) == 2 * 256 * 2 * (15 * 512 + 3 * 2048)
