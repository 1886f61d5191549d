"""The public line, checked on the source (an AST scan, like tests/ui/test_notebooks.py):

* no private name (``_x``) crosses a module boundary, by import or by attribute access on an
  imported evalkit module;
* no package face lists a private name in ``__all__``;
* imports run one way, down the floors ``core`` <- ``metrics`` <- ``assets``/``engine`` <-
  ``stages``/``preflight`` <- ``analysis`` <- ``runner`` <- ``ui``, with no circle;
* ``import evalkit`` and every ``evalkit.core`` module load without pandas, numpy, torch,
  vLLM or lm-eval.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "evalkit"
#: each top-level part of the package and its floor: a module imports only its own floor or
#: lower ones
FLOORS = {"core": 0, "metrics": 1, "assets": 2, "engine": 2, "stages": 3, "preflight": 3,
          "analysis": 4, "runner": 5, "ui": 6}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PKG.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text(), str(p)) for m, p in MODULES.items()}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def _imports(tree: ast.Module, *, top_level_only: bool = False):
    """(imported module, names) for every ``from evalkit... import`` and ``import evalkit...``."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evalkit"):
            yield node.module, [(a.name, a.asname) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("evalkit"):
                    yield a.name, []


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> evalkit module, for every module the tree imports (as a name or alias)."""
    aliases: dict[str, str] = {}
    for src, names in _imports(tree):
        for name, asname in names:
            if f"{src}.{name}" in MODULES:
                aliases[asname or name] = f"{src}.{name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names
                            if a.asname and a.name.startswith("evalkit")})
    return aliases


def test_no_private_name_crosses_a_module_boundary():
    found = []
    for mod, tree in TREES.items():
        aliases = _module_aliases(tree)
        for src, names in _imports(tree):
            found += [f"{mod}: from {src} import {name}" for name, _ in names
                      if f"{src}.{name}" not in MODULES and _private(name) and src != mod]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                found.append(f"{mod}: {aliases[node.value.id]}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(sorted(set(found)))


def test_faces_export_no_private_name():
    found = []
    for mod, tree in TREES.items():
        if MODULES[mod].name != "__init__.py":
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                found += [f"{mod}: {n}" for n in ast.literal_eval(node.value) if _private(n)]
    assert not found, found


def test_imports_run_down_the_floors_without_a_circle():
    upward, graph = [], {m: set() for m in MODULES}
    for mod, tree in TREES.items():
        for src, names in _imports(tree):
            targets = [f"{src}.{n}" for n, _ in names if f"{src}.{n}" in MODULES] or [src]
            for target in targets:
                a, b = _floor(mod), _floor(target)
                if a is not None and b is not None and b > a:
                    upward.append(f"{mod} -> {target}")
        for src, names in _imports(tree, top_level_only=True):
            for target in [f"{src}.{n}" for n, _ in names if f"{src}.{n}" in MODULES] or [src]:
                if target in MODULES and target != mod:
                    graph[mod].add(target)
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)

    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1 and not (n == "evalkit" or m.startswith(n + ".")):
                return [*path, m, n]
            if n not in state and (cycle := visit(n, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_ground_floor_loads_without_heavy_libraries():
    core = sorted(m for m in MODULES if m.startswith("evalkit.core"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in ["evalkit", *core])
            + "print(sorted(x for x in ('pandas', 'numpy', 'torch', 'vllm', 'lm_eval', "
            "'pyarrow', 'transformers') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_stage_imports_another():
    """Stages meet only through the run directory, ``stages.serving`` and the modules below
    them (a variant's checkpoint: ``evalkit.assets.checkpoints``)."""
    found = []
    for mod, tree in TREES.items():
        parts = mod.split(".")
        if len(parts) < 3 or parts[1] != "stages" or parts[2] == "serving":
            continue
        for src, names in _imports(tree):
            targets = [f"{src}.{n}" for n, _ in names] if src == "evalkit.stages" else [src]
            for target in targets:
                other = target.split(".")
                if (len(other) > 2 and other[1] == "stages" and other[2] not in (parts[2], "serving")):
                    found.append(f"{mod} -> {target}")
    assert not found, found


def test_module_attributes_resolve():
    """``alias.name`` on an imported evalkit module names something that module defines (a
    narrowed face or a moved name fails here, not at run time in a notebook)."""
    import importlib

    missing = []
    for mod, tree in TREES.items():
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                target = aliases[node.value.id]
                if not hasattr(importlib.import_module(target), node.attr) \
                        and f"{target}.{node.attr}" not in MODULES:
                    missing.append(f"{mod}:{node.lineno}: {target}.{node.attr}")
    assert not missing, "\n".join(missing)
