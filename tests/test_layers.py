"""The import structure: no import cycles, and no upward imports across the layers
core -> storage -> sweeps (core imports neither; storage does not import sweeps).

Imports inside functions count (a lazy import that would close a loop only hides it); imports
under `if TYPE_CHECKING:` do not (they never run).
"""
from __future__ import annotations

import ast
import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "storage", "sweeps")  # each may import only itself and the ones before it


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere (top level or in a function)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_upward_imports():
    upward = []
    for name, targets in graph().items():
        level = LAYERS.index(name.split(".")[0])
        upward += [f"{name} -> {t}" for t in targets if LAYERS.index(t.split(".")[0]) > level]
    assert not upward, upward


def test_no_import_cycles():
    edges = graph()
    # A package imports its own submodules to re-export them; that is not a cycle of concepts.
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_checker_sees_lazy_imports():
    # sweeps.cli.common imports core only inside run_guarded; the graph must still show it.
    assert "core.checkpoint" in graph()["sweeps.cli.common"]


@pytest.mark.slow  # one fresh interpreter per module
def test_every_module_imports_first_in_a_fresh_interpreter():
    def import_alone(name: str) -> str | None:
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        return f"{name}: {result.stderr.strip().splitlines()[-1]}" if result.returncode != 0 else None

    names = [name for name in project_modules() if not name.endswith("__main__")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one interpreter per core
        failed = [line for line in pool.map(import_alone, names) if line]
    assert not failed, failed
