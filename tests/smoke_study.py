"""The smoke study (tests/data/smoke.yaml) as the end-to-end tests run it: a copy writing
into a temporary directory, executed with the ``evalkit`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "data" / "smoke.yaml"


def smoke_config(tmp_path: Path, **changes) -> Path:
    """The smoke study with ``output_root`` under ``tmp_path`` (and ``changes`` applied)."""
    data = yaml.safe_load(SMOKE.read_text())
    data["output_root"] = str(tmp_path / "outputs")
    data.update(changes)
    p = tmp_path / "smoke.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def evalkit(*args: str, timeout: int = 1800,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m evalkit.ui.cli ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "evalkit.ui.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=None if env is None else {**os.environ, **env})
