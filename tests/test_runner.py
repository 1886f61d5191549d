"""Runner: failed stages leave a visible error and exit 4; runs are never overwritten; a
run in use refuses a second process; the outputs index lists runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evalkit.core.io import file_lock
from evalkit.core.notebooks import render_html

REPO = Path(__file__).resolve().parent.parent


def _broken_checkpoint(tmp_path: Path) -> Path:
    """A directory that looks like a checkpoint (config.json) but holds no weights."""
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
    }))
    return d


def _study(tmp_path: Path, model_dir: Path) -> Path:
    cfg = {
        "study": "broken", "model": {"source": "hf_dir", "path": str(model_dir)},
        "variants": [{"name": "base", "scheme": "base"},
                     {"name": "w8", "scheme": "w8a8_int8"}],
        "output_root": str(tmp_path / "out"),
    }
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _evalkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit.ui.cli", *args], capture_output=True,
                          text=True, timeout=900, cwd=REPO)


@pytest.mark.slow
def test_failed_stage_is_visible_and_exits_4(tmp_path):
    study = _study(tmp_path, _broken_checkpoint(tmp_path))
    proc = _evalkit("run", str(study), "--run-id", "r1", "--stages", "quantize", "--no-progress")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stage 01_quantize failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = tmp_path / "out" / "broken" / "r1"
    nb = json.loads((run / "notebooks" / "01_quantize.ipynb").read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors, "the executed notebook must show the error"
    html = (run / "html" / "01_quantize.html").read_text()
    assert "papermill-error-cell" in html or "Execution using papermill encountered" in html
    status = json.loads((run / "status.json").read_text())
    assert status["stages"]["quantize"]["state"] == "failed"
    # a failed unit is a record, not a lost result
    import pandas as pd

    recs = pd.read_parquet(run / "records" / "quantize.parquet")
    assert "failed" in set(recs["status"])


def test_existing_run_is_not_overwritten(tmp_path):
    study = _study(tmp_path, _broken_checkpoint(tmp_path))
    run = tmp_path / "out" / "broken" / "r1"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("finished work")
    proc = _evalkit("run", str(study), "--run-id", "r1")
    assert proc.returncode == 3
    assert "already exists" in proc.stderr and "--resume r1" in proc.stderr
    assert (run / "keep.txt").read_text() == "finished work"


def test_second_process_on_same_run_refuses(tmp_path):
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study

    study = _study(tmp_path, _broken_checkpoint(tmp_path))
    run = create_run(load_study(study), study, "busy")
    with file_lock(run.path / "run.lock", what="run busy"):
        proc = _evalkit("run", str(study), "--resume", "busy", "--no-progress")
    assert proc.returncode == 3, proc.stderr
    assert "in use" in proc.stderr


def test_resume_refuses_changed_study(tmp_path):
    from evalkit.core.run import create_run
    from evalkit.preflight import load_study

    study = _study(tmp_path, _broken_checkpoint(tmp_path))
    create_run(load_study(study), study, "r2")
    data = yaml.safe_load(study.read_text())
    data["variants"].append({"name": "f8", "scheme": "fp8_dynamic"})
    study.write_text(yaml.safe_dump(data))
    proc = _evalkit("run", str(study), "--resume", "r2")
    assert proc.returncode == 3 and "changed since this run started" in proc.stderr


def test_invalid_study_runs_nothing(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("study: x\nmodel: {source: packaged, name: gemma3-270m}\nvariants: []\n"
                 f"output_root: {tmp_path / 'out'}\n")
    proc = _evalkit("run", str(p))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "variants" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_render_html_hides_code(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"),
                nbformat.v4.new_code_cell("secret_code_line = 1")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    plain, full = render_html(path, tmp_path / "html")
    assert "Title" in plain.read_text() and "secret_code_line" not in plain.read_text()
    assert "secret_code_line" in full.read_text()


def test_help_lists_commands():
    proc = _evalkit("--help")
    assert proc.returncode == 0
    for cmd in ("validate", "run", "runs", "show", "index", "assets", "env", "exit codes"):
        assert cmd in proc.stdout
