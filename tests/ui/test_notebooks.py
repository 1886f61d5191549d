"""Notebooks are thin: parameters cell, one evalkit call per cell, a kernel each. 01-04 are
the study's stages; 05 is the cross-study summary page (``evalkit summary``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evalkit.core.notebooks import notebook_kernel
from evalkit.runner import STAGES

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FORBIDDEN = [r"^\s*def ", r"^\s*class ", r"^\s*for ", r"^\s*while ", r"sys\.path",
             r"import \*", r"^\s*try:"]


SUMMARY = "05_summary"


def test_numbered_notebooks():
    assert [p.stem for p in NOTEBOOKS] == [s.notebook for s in STAGES] + [SUMMARY]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and code[0] is params[0], "first code cell must be the parameters"
    src = "".join(params[0]["source"])
    if path.stem == SUMMARY:
        assert "runs =" in src and "page =" in src
    else:
        assert "config_path" in src and "run_dir" in src
    for c in code[1:]:
        text = "".join(c["source"])
        for pat in FORBIDDEN:
            assert not re.search(pat, text, re.M), f"{path.name}: '{pat}' in cell: {text}"
        calls = re.findall(r"\bek\.\w+\(", text)
        assert 1 <= len(calls) <= 2, f"{path.name}: cell should make one evalkit call: {text}"
        assert not c.get("outputs"), f"{path.name}: committed notebook has outputs"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.notebook)
def test_kernel_per_notebook(stage):
    assert notebook_kernel(REPO / "notebooks" / f"{stage.notebook}.ipynb") == stage.kernel
