"""Output for programs: the public `planner` API (lazy, torch-free import), the README's Python
example, `planner search --json`, and the graph cache that keeps a repeated search torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import planner
from planner.graph import cache_dir, cached_graph, graph_key
from planner.scenario import model_preset

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "PLANNER_CACHE_DIR": str(tmp_path / "cache")}


def test_public_names_resolve_and_import_planner_is_torch_free(env) -> None:
    for name in ("search", "estimate", "load_scenario", "extract_graph", "cached_graph", "load_profile",
                 "datasheet_profile", "Plan", "Scenario", "SearchResult"):
        assert name in planner.__all__ and getattr(planner, name) is not None
    done = _python("import sys, planner; planner.load_scenario, planner.search, planner.estimate, planner.Plan; "
                   "print('torch' in sys.modules)", env=env)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_readme_python_example_runs(env) -> None:
    text = (REPO / "README.md").read_text()
    code = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    done = _python(code, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(mbs" in done.stdout  # best.describe()


def test_graph_cache_round_trips_and_keys_on_the_spec(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path))
    spec = model_preset("tiny-moe")
    first = cached_graph(spec, seq_len=64)
    assert cache_dir() == tmp_path and len(list(tmp_path.glob("graphs/*.pickle"))) == 1
    again = cached_graph(spec, seq_len=64)
    assert again.num_params == first.num_params and len(again.layers) == len(first.layers)
    wider = spec.model_copy(update={"hidden_size": 256})
    assert graph_key(wider, seq_len=64) != graph_key(spec, seq_len=64) != graph_key(spec, seq_len=128)
    (next(tmp_path.glob("graphs/*.pickle"))).write_bytes(b"not a pickle")  # a corrupt entry is rebuilt
    assert cached_graph(spec, seq_len=64).num_params == first.num_params


def test_search_json_is_one_object_and_a_warm_search_never_imports_torch(env, tmp_path: Path) -> None:
    scenario = str(REPO / "scenarios/tiny-moe_cpu4.toml")
    cmd = [sys.executable, "-m", "planner", "search", scenario, "--json", "--top", "3", "--out", str(tmp_path / "r")]
    cold = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert cold.returncode == 0, cold.stderr[-2000:]
    data = json.loads(cold.stdout)  # the whole of stdout is one JSON object (no banner, no table)
    assert len(data["plans"]) == 3 and data["best"]["rank"] == 1 and data["plans"][0] == data["best"]
    assert data["best"]["plan"]["dims"] and data["best"]["estimate"]["step_time_s"] > 0
    warm = _python("import sys, runpy; sys.argv = " + repr(["planner", *cmd[3:]]) + "\n"
                   "try:\n    runpy.run_module('planner', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                   "print('torch' in sys.modules, file=sys.stderr)", env=env, cwd=tmp_path)
    assert warm.returncode == 0 and warm.stderr.strip().splitlines()[-1] == "False", warm.stderr[-2000:]
    assert json.loads(warm.stdout)["best"] == data["best"]


def test_cold_search_traces_in_a_forked_child_and_keeps_torch_out_of_the_parent(env, tmp_path: Path) -> None:
    """graph/cache.prefetch_graph: the child's graph is the in-process one, and so is the cache entry
    written from the child's own pickle; the parent never imports torch."""
    code = ("import sys, pickle\n"
            "from planner.graph import cached_graph, prefetch_graph\n"
            "from planner.scenario import model_preset\n"
            "spec = model_preset('tiny-moe')\n"
            "with prefetch_graph(spec, seq_len=64) as tracing:\n"
            "    assert tracing is not None\n"
            "    graph = cached_graph(spec, seq_len=64, prefetch=tracing)\n"
            "assert prefetch_graph(spec, seq_len=64) is None  # now cached: nothing to start\n"
            "stored = cached_graph(spec, seq_len=64)  # read back from the entry\n"
            "sys.stdout.buffer.write(pickle.dumps((graph, stored, 'torch' in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import pickle

    graph, stored, parent_has_torch = pickle.loads(done.stdout)
    assert not parent_has_torch
    direct = planner.extract_graph(model_preset("tiny-moe"), seq_len=64)
    for got in (graph, stored):
        assert got.layers == direct.layers and got.warnings == direct.warnings
        assert list(got.dag.nodes(data=True)) == list(direct.dag.nodes(data=True))
        assert list(got.dag.edges) == list(direct.dag.edges)


def test_tracing_the_canonical_model_never_imports_torch_dynamo(env) -> None:
    """graph/lean.py: torch._dynamo (~0.7 s to import) stays out of a cold trace, dense and MoE."""
    done = _python("import sys, planner\nfrom planner.scenario import model_preset\n"
                   "for name in ('llama3-8b', 'mixtral-8x7b', 'deepseek-v3'):\n"
                   "    planner.extract_graph(model_preset(name), seq_len=512)\n"
                   "print('torch._dynamo' in sys.modules)", env=env)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
