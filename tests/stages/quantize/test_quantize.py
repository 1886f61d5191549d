"""Quantize stage on a tiny random Llama: real llm-compressor runs, no stand-ins.

Runs in the quantize environment; skipped where llm-compressor is not installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor")

from tiny_model import build_tiny_llama  # noqa: E402

from evalkit.assets.checkpoints import checkpoint_for, checkpoints  # noqa: E402
from evalkit.assets.models import ResolvedModel  # noqa: E402
from evalkit.core.config import parse_study  # noqa: E402
from evalkit.core.errors import StageError  # noqa: E402
from evalkit.core.run import create_run  # noqa: E402
from evalkit.core.specs import Calibration, QuantizeSpec, Variant
from evalkit.stages import quantize as q  # noqa: E402
from evalkit.stages.quantize.checkpoints import (  # noqa: E402
    METADATA_FILE,
    checkpoint_name,
    target_linear_modules,
    weight_bytes,
)

#: scheme -> (format on disk, weight bits, weight type, activation type or None)
EXPECTED = {
    "w4a16": ("pack-quantized", 4, "int", None),
    "w4a8_fp8": ("pack-quantized", 4, "int", "float"),
    "w4a8_int8": ("pack-quantized", 4, "int", "int"),
    "w8a8_int8": ("int-quantized", 8, "int", "int"),
    "fp8_dynamic": ("float-quantized", 8, "float", "float"),
}


#: the engine cache this session started with (the cache fixture points EVALKIT_CACHE away)
USER_CACHE = os.environ.get("EVALKIT_CACHE", str(Path.home() / ".cache" / "evalkit"))


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalkit-cache")
    old = os.environ.get("EVALKIT_CACHE")
    os.environ["EVALKIT_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("EVALKIT_CACHE", None)
    else:
        os.environ["EVALKIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny(cache) -> Path:
    return build_tiny_llama(cache / "models" / "tiny-llama")


def resolved(path: Path, *, real: bool = True, provenance: dict | None = None) -> ResolvedModel:
    return ResolvedModel(
        name="tiny-llama", path=str(path), source="hf_dir" if real else "preset",
        weights_real=real, load_format=None if real else "dummy", caveats=(),
        provenance=provenance or {"path": str(path), "note": "test"},
    )


def test_checkpoint_key_stable_and_sensitive(tmp_path):
    m = resolved(tmp_path)
    qs = QuantizeSpec()
    v = Variant(name="a", scheme="w4a16", method="gptq")
    k = q.checkpoint_key(m, v, qs)
    assert len(k) == 64
    assert k == q.checkpoint_key(m, v, QuantizeSpec())
    # the variant's name is a label, not a setting
    assert k == q.checkpoint_key(m, Variant(name="b", scheme="w4a16", method="gptq"), qs)
    changed = {
        "method": q.checkpoint_key(m, Variant(name="a", scheme="w4a16", method="rtn"), qs),
        "scheme": q.checkpoint_key(m, Variant(name="a", scheme="w4a8_int8", method="gptq"), qs),
        "group": q.checkpoint_key(m, Variant(name="a", scheme="w4a16", method="gptq",
                                             group_size=64), qs),
        "ignore": q.checkpoint_key(m, v, QuantizeSpec(ignore=("lm_head", "re:.*down_proj"))),
        "calibration": q.checkpoint_key(
            m, v, QuantizeSpec(calibration=Calibration(num_samples=8))),
        "provenance": q.checkpoint_key(resolved(tmp_path, provenance={"sha256": "x"}), v, qs),
    }
    assert len(set(changed.values()) | {k}) == len(changed) + 1, changed
    # RTN uses no data: calibration settings must not split its cache
    rtn = Variant(name="r", scheme="w8a8_int8", method="rtn")
    assert q.checkpoint_key(m, rtn, qs) == q.checkpoint_key(
        m, rtn, QuantizeSpec(calibration=Calibration(num_samples=8, seq_len=64)))
    name = checkpoint_name(m, v, k)
    assert name == f"tiny-llama-W4A16-gptq-{k[:12]}"
    assert checkpoint_name(m, rtn, k) == f"tiny-llama-W8A8-INT8-{k[:12]}"


def _logits(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        return model(ids).logits[0].flatten()


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_rtn_each_scheme_writes_loadable_checkpoint(cache, tiny, scheme):
    import torch

    fmt, bits, wtype, atype = EXPECTED[scheme]
    ck = q.quantize_variant(resolved(tiny), Variant(name=scheme, scheme=scheme), QuantizeSpec())
    assert ck.path.parent == cache / "checkpoints"
    assert (ck.path / METADATA_FILE).is_file() and (ck.path / "tokenizer.json").is_file()
    qc = json.loads((ck.path / "config.json").read_text())["quantization_config"]
    assert qc == ck.quantization_config
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    assert qc["quantization_status"] == "compressed"
    group = qc["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == bits and group["weights"]["type"] == wtype
    if atype is None:
        assert group["input_activations"] is None
    else:
        assert group["input_activations"]["type"] == atype
        assert group["input_activations"]["dynamic"] is True
    if bits == 4:
        assert group["weights"]["group_size"] == 128
    # stored linear weights shrink by about the bit ratio (scales add a little)
    base = weight_bytes(tiny, target_linear_modules(tiny, ("lm_head",)))
    ratio = base / ck.weight_bytes
    assert (3.5 if bits == 4 else 1.9) < ratio < (4.0 if bits == 4 else 2.0), ratio
    # transformers decompresses it through compressed-tensors and the model still computes
    # roughly the base model's function
    ref, got = _logits(tiny), _logits(ck.path)
    assert torch.isfinite(got).all()
    corr = torch.corrcoef(torch.stack([ref, got]))[0, 1].item()
    assert corr > (0.9 if bits == 4 else 0.99), corr
    if bits == 4:  # the weights really were rounded to 4 bits, not passed through
        assert corr < 0.999, corr


def test_gptq_w8a8_smoothing_checked_and_optional(tiny):
    """GPTQ of W8A8-INT8 starts with SmoothQuant, run alone first and checked to leave the
    calibration loss unchanged (on a Llama it does); quantize.smoothquant: false leaves it
    out, under another key."""
    cal = Calibration(num_samples=8, seq_len=64)
    v = Variant(name="w8g", scheme="w8a8_int8", method="gptq")
    ck = q.quantize_variant(resolved(tiny), v, QuantizeSpec(calibration=cal))
    meta = json.loads((ck.path / METADATA_FILE).read_text())
    assert meta["recipe"] == ["SmoothQuantModifier", "GPTQModifier"]
    check = meta["smoothing_check"]
    assert check["loss_before"] > 0 and check["relative_change"] <= check["tolerance"], check
    off = q.quantize_variant(resolved(tiny), v,
                             QuantizeSpec(calibration=cal, smoothquant=False))
    meta_off = json.loads((off.path / METADATA_FILE).read_text())
    assert off.key != ck.key and meta_off["recipe"] == ["GPTQModifier"]
    assert "smoothing_check" not in meta_off


@pytest.mark.slow
def test_smoothing_that_changes_the_model_fails_before_gptq(monkeypatch):
    """llm-compressor 0.14's SmoothQuant mappings for Gemma 3 smooth post_attention_layernorm
    into the MLP, which Gemma 3 feeds from pre_feedforward_layernorm: the smoothing alone took
    the packaged Gemma 3 270M from perplexity 41 to ~1e11. The variant fails with that
    measurement and the remedy, and no checkpoint is written."""
    from evalkit.assets.models import resolve_model  # noqa: PLC0415
    from evalkit.core.errors import ConfigError, EvalkitError  # noqa: PLC0415
    from evalkit.core.specs import ModelSpec  # noqa: PLC0415
    from evalkit.stages.quantize.checkpoints import checkpoint_root  # noqa: PLC0415

    monkeypatch.setenv("EVALKIT_CACHE", USER_CACHE)  # the packaged model setup.sh prepared
    try:
        m = resolve_model(ModelSpec(source="packaged", name="gemma3-270m"))
    except EvalkitError as exc:
        pytest.skip(f"gemma3-270m not available: {exc}")
    v = Variant(name="w8g", scheme="w8a8_int8", method="gptq")
    qs = QuantizeSpec(calibration=Calibration(num_samples=4, seq_len=64))
    final = checkpoint_root() / checkpoint_name(m, v, q.checkpoint_key(m, v, qs))
    with pytest.raises(ConfigError, match=r"SmoothQuant changed what the model computes "
                       r"\(Gemma3ForCausalLM.*quantize\.smoothquant: false"):
        q.quantize_variant(m, v, qs)
    assert not final.exists()


def test_second_call_reuses_checkpoint(tiny):
    v = Variant(name="w8", scheme="w8a8_int8")
    first = q.quantize_variant(resolved(tiny), v, QuantizeSpec())
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    again = q.quantize_variant(resolved(tiny), v, QuantizeSpec())
    assert again.cached is True and again.path == first.path and again.key == first.key
    assert again.quantize_s == first.quantize_s
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in first.path.parent.iterdir() if p.name.endswith(".partial")]


def test_preset_config_matches_real_quantization(tiny, tmp_path):
    """A weightless preset gets exactly the quantization_config a real run writes."""
    preset = tmp_path / "tiny-preset"
    preset.mkdir()
    for f in tiny.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy2(f, preset / f.name)
    for scheme in EXPECTED:
        v = Variant(name=scheme, scheme=scheme)
        real = q.quantize_variant(resolved(tiny), v, QuantizeSpec())
        dummy = q.quantize_variant(resolved(preset, real=False), v, QuantizeSpec())
        assert dummy.path != real.path
        assert dummy.quantization_config == real.quantization_config, scheme
        assert not list(dummy.path.glob("*.safetensors"))
        assert (dummy.path / "tokenizer.json").is_file()
        assert math.isnan(dummy.weight_bytes)


def test_run_stage_records_failures_and_resume(tiny, tmp_path):
    study = {
        "study": "qtest",
        "model": {"source": "hf_dir", "path": str(tiny)},
        "variants": [
            {"name": "base", "scheme": "base"},
            {"name": "w8a8", "scheme": "w8a8_int8"},
            # 96 does not divide the hidden size 256: llm-compressor refuses it
            {"name": "w4a16_g96", "scheme": "w4a16", "group_size": 96},
        ],
        "output_root": str(tmp_path / "out"),
    }
    cfg = parse_study(study)
    src = tmp_path / "study.yaml"
    src.write_text(json.dumps(study))
    run = create_run(cfg, src)

    result = q.run_stage(cfg, run)
    assert [f.unit.variant for f in result.failures] == ["w4a16_g96"]
    with pytest.raises(StageError, match="w4a16_g96"):
        result.raise_for_failures()
    df = run.records()
    assert set(df["stage"]) == {"quantize"}
    assert set(df["variant"]) == {"base", "w8a8", "w4a16_g96"}
    assert (df["backend"] == "llm-compressor").all() and (df["run_id"] == run.run_id).all()
    ok = df[df["variant"] == "w8a8"].set_index("metric")
    assert set(ok.index) == {"quantize_time_s", "checkpoint_size_bytes", "weight_bytes",
                             "compression_ratio"}
    assert (ok["status"] == "ok").all() and (ok["stat"] == "value").all()
    assert ok.loc["quantize_time_s", "unit"] == "s" and ok.loc["weight_bytes", "unit"] == "bytes"
    assert ok.loc["compression_ratio", "unit"] == "x"
    assert bool(ok.loc["compression_ratio", "higher_is_better"]) is True
    assert 1.9 < ok.loc["compression_ratio", "value"] < 2.0
    base = df[df["variant"] == "base"].set_index("metric")
    assert "quantize_time_s" not in base.index
    assert base.loc["compression_ratio", "value"] == 1.0
    failed = df[df["variant"] == "w4a16_g96"]
    assert list(failed["status"]) == ["failed"] and "group_size" in failed["note"].iloc[0]
    assert math.isnan(failed["value"].iloc[0])

    raw = json.loads((run.path / "raw" / "quantize" / "w8a8.json").read_text())
    assert raw["quantization_config"]["format"] == "int-quantized"
    assert "cpu_kernel_expected" in raw and "hopper_kernels" in raw

    # later stages find checkpoints from the unit markers
    assert checkpoint_for(run, "w8a8") == Path(raw["checkpoint"])
    assert checkpoint_for(run, "base") == Path(tiny)
    assert set(checkpoints(run)) == {"base", "w8a8"}

    # resume: finished units are skipped, the failed one is tried again
    log_before = (run.path / "logs" / "run.log").read_text()
    df2 = q.run_stage(cfg, run).records
    log = (run.path / "logs" / "run.log").read_text()[len(log_before):]
    assert "skipped w8a8 (done)" in log and "skipped base (done)" in log
    assert "w4a16_g96 FAILED" in log
    assert len(df2) == len(df)

    # resumed where the checkpoint cache was cleared (another host): rebuilt under the same
    # key, with a log line, instead of a "done" unit pointing at nothing
    shutil.rmtree(raw["checkpoint"])
    log_before = (run.path / "logs" / "run.log").read_text()
    q.run_stage(cfg, run)
    log = (run.path / "logs" / "run.log").read_text()[len(log_before):]
    assert f"w8a8 was done but its checkpoint {raw['checkpoint']} is gone" in log
    assert "skipped base (done)" in log
    assert checkpoint_for(run, "w8a8") == Path(raw["checkpoint"])
