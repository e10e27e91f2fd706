"""Graph extractor: a model on the meta device -> ModelGraph (operator DAG + layers).

types.py is the leaf the cost model reads. Everything that needs torch (the canonical
Transformer, the tracer, foreign modules) is exported lazily (PEP 562), so that
`from planner.graph import ModelGraph` never imports torch: the search on a cached graph
stays torch-free.
"""

from importlib import import_module
from typing import Any

from planner.graph.cache import GraphPrefetch, cache_dir, cached_graph, graph_key, prefetch_graph
from planner.graph.collector import collector_paused
from planner.graph.types import BlockKind, KindTotals, Layer, LayerKind, ModelGraph, MoEStats, OpKind, OpNode

_LAZY = {  # name -> submodule that defines it (each imports torch)
    "extract_graph": "canonical",
    "trace_module": "modules",
    "graph_for": "load",
    "graph_summary": "load",
    "Transformer": "transformer",
    "MoE": "transformer",
    "loss_fn": "transformer",
    "expand_kv": "transformer",
}

__all__ = ["GraphPrefetch", "cache_dir", "cached_graph", "collector_paused", "graph_key", "prefetch_graph", "BlockKind", "KindTotals", "Layer", "LayerKind", "ModelGraph", "MoEStats", "OpKind", "OpNode", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'planner.graph' has no attribute {name!r}")
    value = getattr(import_module(f"planner.graph.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
