"""Jupyter kernel specs for the two environments.

Both specs are written under one prefix (the eval environment's), so JupyterLab and
papermill started there see both kernels. The quantize kernel can carry a PYTHONPATH for
hosts where llm-compressor is installed into a separate directory rather than a venv.
"""

from __future__ import annotations

import os
from pathlib import Path

from evalkit.core.errors import EvalkitError
from evalkit.core.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]

KERNELS = {
    "evalkit-eval": "evalkit eval (vLLM, lm-eval)",
    "evalkit-quantize": "evalkit quantize (llm-compressor)",
}


def _spec(python: Path, display: str, env: dict[str, str]) -> dict:
    # absolute but not resolved: a venv's python is a symlink whose target is outside the venv
    spec = {
        "argv": [os.path.abspath(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display,
        "language": "python",
        "metadata": {"debugger": True},
    }
    if env:
        spec["env"] = env
    return spec


def install_kernels(*, prefix: Path, eval_python: Path, quantize_python: Path,
                    quantize_pythonpath: str | None = None) -> list[Path]:
    """Write both kernel specs; returns their kernel.json paths."""
    for py in (eval_python, quantize_python):
        if not (Path(py).is_file() and os.access(py, os.X_OK)):
            raise EvalkitError(f"kernels: '{py}' is not an executable Python")
    qenv = {}
    if quantize_pythonpath:
        qenv["PYTHONPATH"] = os.pathsep.join([quantize_pythonpath, str(REPO_ROOT)])
    out = []
    for name, python, env in (("evalkit-eval", eval_python, {}),
                              ("evalkit-quantize", quantize_python, qenv)):
        path = Path(prefix) / "share" / "jupyter" / "kernels" / name / "kernel.json"
        atomic_write_json(path, _spec(Path(python), KERNELS[name], env))
        out.append(path)
    return out
