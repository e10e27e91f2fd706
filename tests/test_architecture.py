"""Import rules and shape of the tree (ARCHITECTURE.md), checked over the real source files.

The import graph is built from every module's top-level imports (AST); `from pkg import name`
counts as an import of the submodule pkg.name when that file exists, else of pkg's __init__.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import networkx as nx
import pytest

from conftest import REPO

PACKAGES = ("planner", "executor")
LEAVES = ("planner.errors", "planner.plan", "planner.scenario.spec", "planner.scenario.kinds",
          "planner.scenario.network", "planner.scenario.host", "planner.scenario.sequences", "planner.graph.types",
          "planner.hardware.profile")
LEAF_LIBRARIES = {"__future__", "pydantic", "numpy", "networkx", "typing", "enum", "dataclasses", "functools",
                  "pathlib", "math", "bisect", "warnings", "collections", "itertools", "json", "re"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _resolve(module: str, name: str | None) -> str:
    """`from module import name`: the submodule when it is one, else the module itself."""
    mods = _modules()
    if name is not None and f"{module}.{name}" in mods:
        return f"{module}.{name}"
    return module


def _top_level_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name) of every import outside functions (TYPE_CHECKING blocks included)."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, alias.name) for alias in node.names]
    return out


def _function_imports(path: Path) -> list[str]:
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    found.append(f"{fn.name}: from {node.module}")
                elif isinstance(node, ast.Import):
                    found += [f"{fn.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in PACKAGES]
    return found


@cache
def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in _modules().items():
        graph.add_node(name)
        for module, imported in _top_level_imports(path):
            if module.split(".")[0] in PACKAGES:
                graph.add_edge(name, _resolve(module, imported))
    return graph


def _project_edges(name: str) -> set[str]:
    return set(_graph().successors(name))


def test_no_import_cycles() -> None:
    # A package's __init__ importing its own submodules is its public face, not a cycle; the
    # cycles that matter run between modules, so edges into a package's own __init__ from its
    # submodules are kept and would show up here.
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_no_project_import_inside_functions_outside_cli() -> None:
    bad = {name: found for name, path in _modules().items()
           if not name.startswith("planner.cli") and (found := _function_imports(path))}
    assert not bad, f"imports inside functions: {bad}"


def test_no_type_checking_escapes() -> None:
    bad = [name for name, path in _modules().items() if "TYPE_CHECKING" in path.read_text()]
    assert not bad, f"TYPE_CHECKING imports hide a cycle in {bad}"


def test_modules_stay_small_and_planner_stays_flat() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
    entries = [p.name for p in (REPO / "planner").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, f"{len(entries)} entries directly in planner/: {sorted(entries)}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_only_libraries_and_other_leaves(leaf: str) -> None:
    names = [n for n in _modules() if n == leaf or n.startswith(leaf + ".")]
    assert names, leaf
    for name in names:
        for module, _ in _top_level_imports(_modules()[name]):
            root = module.split(".")[0]
            if root in PACKAGES:
                assert any(module == lf or module.startswith(lf + ".") for lf in LEAVES), f"{name} imports {module}"
            else:
                assert root in LEAF_LIBRARIES, f"leaf {name} imports the library {module}"


def test_executor_imports_only_the_contract() -> None:
    allowed = ("planner.plan", "planner.scenario", "planner.graph", "planner.errors", "executor")
    for name in (n for n in _modules() if n.startswith("executor")):
        bad = {m for m in _project_edges(name) if not m.startswith(allowed)}
        assert not bad, f"{name} imports {bad}"
        assert not {m for m in _project_edges(name) if m.startswith(("planner.cost", "planner.search"))}


@pytest.mark.parametrize("package", ["planner.cost", "planner.search"])
def test_cost_and_search_never_reach_torch(package: str) -> None:
    """Not even through another module: the search on a cached graph stays torch-free."""
    mods = _modules()
    reached = nx.descendants(_graph(), package) | {package}
    reached |= {d for n in list(reached) for d in nx.descendants(_graph(), n)}
    for name in reached:
        libs = {m.split(".")[0] for m, _ in _top_level_imports(mods[name])}
        assert "torch" not in libs, f"{package} reaches {name}, which imports torch"
        assert not name.startswith(("planner.cli", "planner.report", "executor")), f"{package} reaches {name}"


def test_report_never_calls_search_or_the_executor() -> None:
    for name in (n for n in _modules() if n.startswith("planner.report")):
        bad = {m for m in _project_edges(name)
               if m.startswith(("executor", "planner.cli")) or (m.startswith("planner.search") and m != "planner.search.result")}
        assert not bad, f"{name} imports {bad}"


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "planner" else parts[0]


def test_packages_are_imported_through_their_face() -> None:
    """Another package is reached through its __init__, or through one of the leaves; the typed
    search result is the one submodule the report reads directly (it must not reach search())."""
    exceptions = ("planner.search.result",)
    bad = []
    for name, path in _modules().items():
        if name.startswith("planner.cli") or not name.startswith("planner"):
            continue
        for module, _ in _top_level_imports(path):
            if (module.startswith("planner.") and _package(module) != _package(name) and module != _package(module)
                    and not module.startswith(LEAVES + exceptions)):
                bad.append(f"{name} -> {module}")
    assert not bad, bad


def test_private_names_never_cross_modules() -> None:
    bad = []
    for name, path in _modules().items():
        for module, imported in _top_level_imports(path):
            if module.split(".")[0] in PACKAGES and imported and imported.startswith("_") and imported != "__version__":
                bad.append(f"{name}: from {module} import {imported}")
    assert not bad, bad


def _sources_matching(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return sorted(name for name, path in _modules().items() if rx.search(path.read_text()))


def test_one_rank_grid_one_degrees_record_one_validity_function() -> None:
    # the grid: only plan/grid.py lays the ranks out over a plan's rank order
    assert _sources_matching(r"arange\((?:.|\n)*rank_order|rank_order(?:.|\n)*arange\(") == ["planner.plan.grid"]
    assert _sources_matching(r"^def rank_grid\(") == ["planner.plan.grid"]
    # the degrees: one dataclass holds dp/tp/pp/cp/ep/etp; no other class declares them all
    declares = _sources_matching(r"^class \w+.*:\n(?:(?:    .*)?\n)*?    dp: int[^\n]*\n(?:(?:    .*)?\n)*?    tp: int")
    assert declares == ["planner.plan.dims"], declares
    # validity: the Megatron divisibility rules are written once
    assert _sources_matching(r"does not divide num_attention_heads") == ["planner.plan.validity"]
    assert _sources_matching(r"^def problems\(") == ["planner.plan.validity"]
