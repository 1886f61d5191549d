"""Real quantized checkpoints of the packaged Gemma 3 270M for tests, built (or reused from
the checkpoint cache) by the quantize stage in the quantize environment (llm-compressor
lives there, apart from vLLM)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUANTIZE_PY = REPO / ".venv" / "quantize" / "bin" / "python"


def rtn_checkpoint(scheme: str) -> Path:
    """RTN checkpoint of gemma3-270m for ``scheme`` (skips without the quantize env)."""
    if not QUANTIZE_PY.is_file():
        pytest.skip("quantize environment not installed")
    code = (
        "from evalkit.assets.models import resolve_model\n"
        "from evalkit.core.specs import ModelSpec, QuantizeSpec, Variant\n"
        "from evalkit.stages.quantize import quantize_variant\n"
        "m = resolve_model(ModelSpec(source='packaged', name='gemma3-270m'))\n"
        f"q = quantize_variant(m, Variant(name='v', scheme='{scheme}'), QuantizeSpec())\n"
        "print('CKPT', q.path)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([str(QUANTIZE_PY), "-c", code], capture_output=True, text=True,
                         timeout=900, env=env, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("CKPT ")]
    assert out.returncode == 0 and lines, out.stderr[-2000:]
    return Path(lines[-1].split(" ", 1)[1])
