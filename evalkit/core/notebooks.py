"""Executing and rendering the notebooks: the one place papermill and nbconvert are called.

Used by :mod:`evalkit.runner` (the stage notebooks 01-04) and
:mod:`evalkit.analysis.summary` (notebook 05); papermill, nbformat and nbconvert are imported
only when a notebook is executed or rendered.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit.core.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK_DIR = Path(os.environ.get("EVALKIT_NOTEBOOKS", REPO_ROOT / "notebooks"))


class NotebookFailed(Exception):  # noqa: N818 -- papermill's execution error, restated
    """A cell raised: which cell (``exec_count``), the exception's name and value."""

    def __init__(self, exec_count: int | None, ename: str, evalue: str) -> None:
        super().__init__(f"cell {exec_count}: {ename}: {evalue}")
        self.exec_count, self.ename, self.evalue = exec_count, ename, evalue


def notebook_kernel(path: Path) -> str:
    """The kernel a notebook asks for in its metadata."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb["metadata"]["kernelspec"]["name"]


def execute_notebook(src: Path, out: Path, *, parameters: Mapping[str, Any], cwd: str | Path,
                     progress: bool = False, save_every_cell: bool = False) -> None:
    """Execute ``src`` with papermill into ``out``, in the kernel its metadata names.

    Raises:
        NotebookFailed: a cell raised (``out`` holds the executed notebook up to the error).
    """
    import papermill as pm

    try:
        pm.execute_notebook(str(src), str(out), parameters=dict(parameters),
                            kernel_name=notebook_kernel(src), progress_bar=progress,
                            request_save_on_cell_execute=save_every_cell, cwd=str(cwd))
    except pm.PapermillExecutionError as exc:
        raise NotebookFailed(exc.exec_count, exc.ename, exc.evalue or "") from None
    except KeyboardInterrupt:
        _reap_kernels()
        raise


#: how long an interrupted kernel gets to unwind its cell (a stage stops its vLLM servers
#: on the way out) before it is killed
KERNEL_GRACE_S = 60.0


def _kernels() -> list[Any]:
    """This process's notebook kernels: its children running ``ipykernel_launcher``."""
    import psutil

    out = []
    for p in psutil.Process().children():
        try:
            if any("ipykernel" in part for part in p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def interrupt_kernels() -> None:
    """Send SIGINT to the running notebook kernels, as Jupyter's interrupt does.

    jupyter_client starts each kernel in a session of its own, so a signal to this process
    never reaches the kernel; papermill's own shutdown interrupts it only after it has
    unwound here, which leaves the running cell time to finish (and mark done) the unit it
    is in. Called from the runner's signal handler, so the cell stops at once.
    """
    for p in _kernels():
        try:
            os.killpg(p.pid, signal.SIGINT)  # the kernel leads its process group
        except OSError:
            try:
                os.kill(p.pid, signal.SIGINT)
            except OSError:
                continue


def _reap_kernels() -> None:
    """After an interrupt: wait for the kernels to finish unwinding, kill what is left.

    A kernel that outlived ``evalkit run`` would go on measuring into the run directory
    (and hold the run's output files open) after the run said it stopped.
    """
    import psutil

    alive = _kernels()
    if not alive:
        return
    _, alive = psutil.wait_procs(alive, timeout=KERNEL_GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue


def page_title(nb) -> str | None:
    """The page's title: the first Markdown heading a cell's output shows (a thin notebook
    prints its title as an output, never as a Markdown cell of its own), else the first
    heading of a Markdown cell."""
    for cell in nb.cells:
        texts = ([o.get("data", {}).get("text/markdown", "") for o in cell.get("outputs", [])]
                 if cell.cell_type == "code" else [cell.source])
        for t in texts:
            if isinstance(t, list):
                t = "".join(t)
            for line in t.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            m = re.search(r"<h[12][^>]*>(.*?)</h[12]>", t or "", flags=re.S)
            if m:
                return re.sub(r"<[^>]+>", "", m.group(1)).strip()
        for o in cell.get("outputs", []):
            m = re.search(r"<h[12][^>]*>(.*?)</h[12]>", o.get("data", {}).get("text/html", ""),
                          flags=re.S)
            if m:
                return re.sub(r"<[^>]+>", "", m.group(1)).strip()
    return None


def render_html(notebook: Path, out_dir: Path, title: str | None = None) -> tuple[Path, Path]:
    """Render an executed notebook to HTML: (stakeholder copy without code, copy with code).
    The pages' ``<title>`` is ``title``, else :func:`page_title` of the notebook, else its
    file name."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    title = (title or page_title(nb) or "").replace("`", "").strip()
    if title:
        nb.metadata["title"] = title
    stem = notebook.stem
    plain = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                         exclude_output_prompt=True)
    full = HTMLExporter()
    body_plain, _ = plain.from_notebook_node(nb)
    body_full, _ = full.from_notebook_node(nb)
    p1 = atomic_write_text(out_dir / f"{stem}.html", body_plain)
    p2 = atomic_write_text(out_dir / f"{stem}.code.html", body_full)
    return p1, p2
