"""Import rules from ARCHITECTURE.md: one-way arrows between the modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_imports(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.split(".")[0] in ("planner", "executor")}


def test_leaves_import_no_project_module_but_each_other() -> None:
    allowed = {"planner.plan", "planner.scenario.spec", "planner.graph.types"}
    for leaf in ("plan.py", "hardware.py"):
        path = REPO / "planner" / leaf
        if path.exists():
            bad = {n for n in _project_imports(path) if not any(n.startswith(a) for a in allowed)}
            assert not bad, f"{leaf} imports {bad}"


def test_executor_never_imports_cost_or_search() -> None:
    allowed = ("planner.plan", "planner.scenario.spec", "planner.scenario.models", "planner.graph.transformer", "planner.scenario.clusters", "executor")
    for path in (REPO / "executor").rglob("*.py"):
        bad = {n for n in _project_imports(path) if not n.startswith(allowed)}
        assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("module", ["cost", "search.py", "ilp.py"])
def test_cost_and_search_never_take_torch(module: str) -> None:
    target = REPO / "planner" / module
    paths = list(target.rglob("*.py")) if target.is_dir() else [target]
    for path in paths:
        if path.exists():
            names = _imports(path)
            assert not {n for n in names if n.split(".")[0] == "torch"}, f"{path.name} imports torch"
            assert not {n for n in names if n.startswith(("planner.cli.main", "planner.report.files", "executor"))}


def test_report_never_calls_search() -> None:
    paths = sorted((REPO / "planner").glob("report*.py"))
    assert paths
    for path in paths:
        bad = {n for n in _project_imports(path) if n.startswith(("planner.search.engine.search", "planner.search_", "executor"))}
        assert not bad, f"{path.name} imports {bad}"
