"""evalkit.engine.server: the command a VLLMServer runs, and real servers on this CPU (a
tiny random-weight model): serving, failing to start, and leaving no process behind."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest

from evalkit.core.errors import EngineError, UnsupportedSchemeError
from evalkit.core.specs import EngineSpec
from evalkit.engine.logparse import provenance
from evalkit.engine.process import group_members
from evalkit.engine.prometheus import scrape_metrics
from evalkit.engine.server import VLLMServer


def test_command_has_no_shell_and_binds_localhost(tmp_path):
    s = VLLMServer(tmp_path, engine=EngineSpec(enforce_eager=True, max_num_seqs=4),
                     log_path=tmp_path / "l.log", served_model_name="a b; rm -rf /")
    cmd = s.command(1234)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--served-model-name") + 1] == "a b; rm -rf /"  # one argv element
    assert "--enforce-eager" in cmd and "--trust-remote-code" not in cmd
    assert cmd[cmd.index("--max-num-seqs") + 1] == "4"


# ---- real engines on CPU ---------------------------------------------------------------

# float32: on a CPU with AMX, vLLM's bfloat16 path kills its worker on the tiny model's first
# forward pass (hidden size 256); the test is about serving and cleaning up, not the dtype
ENGINE = EngineSpec(enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=256,
                    startup_timeout_s=300, dtype="float32")


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama

    return build_tiny_llama()


@pytest.mark.slow
def test_server_serves_and_leaves_no_process(tiny, tmp_path):
    s = VLLMServer(tiny, engine=ENGINE, log_path=tmp_path / "s.log", served_model_name="tiny")
    t0 = time.monotonic()
    s.launch()  # returns at once; readiness is watched from here
    deadline = t0 + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/v1/models", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    time.sleep(5)  # waited for late, as a server launched beside others is
    s.wait()
    # startup_s is when the server first answered, not when wait() was called
    assert 0 < s.startup_s <= time.monotonic() - t0 - 4
    with s:
        pgid = s.pid
        assert s.base_url == f"http://127.0.0.1:{s.port}"
        body = json.dumps({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(s.base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert out["usage"]["completion_tokens"] == 4
        assert len(group_members(pgid)) >= 2  # api server + engine core
        m = scrape_metrics(s.base_url)
        assert m["vllm:request_success_total"]["value"] >= 1
        assert provenance(s.log_text())["platform"] == "cpu"
    assert group_members(pgid) == []


@pytest.mark.slow
def test_impossible_engine_raises_and_cleans_up(tiny, tmp_path):
    # 1% of RAM cannot hold the engine's own memory, let alone a KV cache
    bad = ENGINE.model_copy(update={"gpu_memory_utilization": 0.01})
    s = VLLMServer(tiny, engine=bad, log_path=tmp_path / "s.log", served_model_name="tiny")
    with pytest.raises(EngineError) as ei:
        s.start()
    assert not isinstance(ei.value, UnsupportedSchemeError)
    assert "gpu-memory-utilization" in str(ei.value) or "memory" in str(ei.value)
    assert s.pid is not None and group_members(s.pid) == []


@pytest.mark.slow
def test_broken_checkpoint_raises_engine_error(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["hidden_size"] = 250  # not divisible by the head count: the model cannot be built
    (broken / "config.json").write_text(json.dumps(cfg))
    s = VLLMServer(broken, engine=ENGINE, log_path=tmp_path / "s.log",
                     served_model_name="broken")
    with pytest.raises(EngineError) as ei:
        with s:
            pass
    assert "exited with code" in str(ei.value) and "last log lines" in str(ei.value)
    assert group_members(s.pid) == []
