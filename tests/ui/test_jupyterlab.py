"""JupyterLab serves both evalkit kernels and the five notebooks (checked over its REST API)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_jupyterlab_serves_kernels_and_notebooks(tmp_path):
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        pytest.skip("jupyter is not installed in this environment")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"), env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                specs = _get(f"{base}/api/kernelspecs", token)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("jupyter lab did not start: "
                                + (tmp_path / "lab.log").read_text()[-2000:])
                time.sleep(1)
        names = set(specs["kernelspecs"])
        assert {"evalkit-eval", "evalkit-quantize"} <= names, names
        quant = specs["kernelspecs"]["evalkit-quantize"]["spec"]
        assert "quantize" in quant["argv"][0], quant["argv"]
        listing = _get(f"{base}/api/contents/notebooks", token)
        got = sorted(c["name"] for c in listing["content"] if c["type"] == "notebook")
        assert got == ["01_quantize.ipynb", "02_accuracy.ipynb", "03_latency.ipynb",
                       "04_report.ipynb", "05_summary.ipynb"]
        nb = _get(f"{base}/api/contents/notebooks/01_quantize.ipynb", token)
        assert nb["content"]["metadata"]["kernelspec"]["name"] == "evalkit-quantize"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
