"""Reference runs retired from outputs/reference/ (docs/results.md, "Retired runs"), read
back from the last commit that holds them, for tests of what only they show (an eager GPU
engine, a kernel substitution, an interrupted accuracy stage, roofline percentages)."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the last commit holding the retired reference runs (docs/results.md names it)
RETIRED_AT = "338dab78643fe76afc0ef5759c249de4713c296f"


def retired_run(name: str, dest: Path) -> Path:
    """Extract ``outputs/reference/<name>`` (STUDY/RUN_ID) as of :data:`RETIRED_AT` into
    ``dest`` and return the run directory; skips the test where git or that commit is not
    available (a shallow clone, a tree without .git)."""
    path = f"outputs/reference/{name}"
    try:
        out = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", RETIRED_AT,
                              path], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"retired run {name} not readable from git ({exc})")
    with tarfile.open(fileobj=BytesIO(out.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / path
