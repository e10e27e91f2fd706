"""What `planner graph` traces (a scenario, a preset, a config.json or a user factory) and prints."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from planner.graph.canonical import extract_graph
from planner.graph.modules import trace_module
from planner.graph.types import ModelGraph
from planner.scenario import load_hf_config, model_preset
from planner.scenario import ModelSpec, load_scenario

DEFAULT_SEQ_LEN = 4096


def graph_for(scenario: Path | None, *, model: str | None, seq_len: int | None, batch: int = 1) -> ModelGraph:
    """The graph `planner graph` shows: exactly one of a scenario file or --model."""
    if (scenario is None) == (model is None):
        raise ValueError("graph: give a scenario file or --model NAME|config.json|pkg.module:factory (one of them)")
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"--seq-len: must be >= 1, got {seq_len}")
    if scenario is not None:
        sc = load_scenario(scenario)
        return extract_graph(sc.model, seq_len=seq_len or sc.job.seq_len, batch=batch)
    if ":" in model and not Path(model).is_file():
        return _factory_graph(model, seq_len=seq_len or DEFAULT_SEQ_LEN, batch=batch)
    spec = _spec(model)
    return extract_graph(spec, seq_len=seq_len or min(DEFAULT_SEQ_LEN, spec.max_position_embeddings), batch=batch)


def _spec(model: str) -> ModelSpec:
    path = Path(model)
    if path.suffix == ".json" or path.is_file():
        return load_hf_config(path)
    return model_preset(model)


def _factory_graph(target: str, *, seq_len: int, batch: int) -> ModelGraph:
    """pkg.module:factory -> an nn.Module, or (module, example_inputs); built under meta."""
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model: cannot load factory '{target}' ({err}); use pkg.module:function") from None
    with torch.device("meta"):
        made = factory()
    module, inputs = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"--model: {target}() returned {type(module).__name__}; return an nn.Module or (module, inputs)")
    if inputs is None:
        inputs = (torch.zeros(batch, seq_len, dtype=torch.long),)
    return trace_module(module.to(torch.bfloat16), inputs, name=attr)


def layer_rows(graph: ModelGraph) -> list[dict[str, Any]]:
    """Per-layer numbers, per token of the traced sample (tokens = sample_batch x seq_len)."""
    tokens = graph.sample_batch * graph.seq_len
    return [{
        "index": layer.index, "name": layer.name, "kind": layer.kind.value, "block_kind": layer.block_kind,
        "params": layer.num_params, "active_params": layer.num_active_params,
        "fwd_flops_per_token": layer.fwd_flops / tokens, "bwd_flops_per_token": layer.bwd_flops / tokens,
        "saved_bytes_per_token": layer.saved_bytes / tokens,
        "saved_bytes_flash_per_token": layer.saved_bytes_flash / tokens,
        "saved_bytes_selective_per_token": layer.saved_bytes_selective / tokens,
        "experts": layer.moe.num_experts if layer.moe else 0,
    } for layer in graph.layers]


def graph_summary(graph: ModelGraph) -> dict[str, Any]:
    """JSON-ready: model facts, totals (training FLOPs per token = fwd + bwd) and the layer rows."""
    tokens = graph.sample_batch * graph.seq_len
    return {
        "name": graph.name, "seq_len": graph.seq_len, "sample_batch": graph.sample_batch,
        "dtype_bytes": graph.dtype_bytes, "num_ops": graph.dag.number_of_nodes(),
        "params": graph.num_params, "active_params": graph.num_active_params,
        "fwd_flops_per_token": graph.fwd_flops / tokens,
        "train_flops_per_token": (graph.fwd_flops + graph.bwd_flops) / tokens,
        "saved_bytes_per_token": sum(layer.saved_bytes for layer in graph.layers) / tokens,
        "warnings": graph.warnings, "layers": layer_rows(graph),
    }
