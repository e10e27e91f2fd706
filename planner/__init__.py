"""planner: auto-parallel planner and cost-model simulator for LLM training.

The public API, in the order a program uses it::

    import planner
    sc = planner.load_scenario("scenarios/tiny-dense_cpu4.toml")
    graph = planner.cached_graph(sc.model, seq_len=sc.job.seq_len)   # or extract_graph (always traces)
    hw = planner.datasheet_profile(sc.cluster)                        # or load_profile("profiles/x.json")
    result = planner.search(graph, sc, hw=hw)
    est = planner.estimate(graph, result.best.plan, hw=hw, cluster=sc.cluster, job=sc.job)

Names are loaded on first use (PEP 562), so `import planner` stays light and never imports torch:
only tracing (extract_graph on a cache miss, trace_module) and the executor do.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {  # name -> module that defines it
    "Plan": "planner.plan",
    "ParallelDims": "planner.plan",
    "Schedule": "planner.plan",
    "Recompute": "planner.plan",
    "ZeroStage": "planner.plan",
    "Scenario": "planner.scenario",
    "load_scenario": "planner.scenario",
    "model_preset": "planner.scenario",
    "cluster_preset": "planner.scenario",
    "ModelGraph": "planner.graph",
    "extract_graph": "planner.graph",  # imports torch
    "trace_module": "planner.graph",  # imports torch
    "cached_graph": "planner.graph",
    "HardwareProfile": "planner.hardware",
    "load_profile": "planner.hardware",
    "datasheet_profile": "planner.hardware",
    "Estimate": "planner.cost",
    "estimate": "planner.cost",
    "search": "planner.search",
    "SearchResult": "planner.search",
    "write_search_outputs": "planner.report",
    "render_report": "planner.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'planner' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
