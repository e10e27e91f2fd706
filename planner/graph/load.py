"""What `planner graph` traces (a scenario, a preset, a config.json or a user factory) and prints."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from planner.errors import UserError
from planner.graph.canonical import extract_graph
from planner.graph.modules import trace_module
from planner.graph.types import ModelGraph
from planner.scenario import PRESETS, load_hf_config, model_preset
from planner.scenario import ModelSpec, load_scenario
from planner.scenario.spec import MAX_DIMENSION

DEFAULT_SEQ_LEN = 4096


def graph_for(scenario: Path | None, *, model: str | None, seq_len: int | None, batch: int = 1) -> ModelGraph:
    """The graph `planner graph` shows: exactly one of a scenario file or --model."""
    if (scenario is None) == (model is None):
        raise ValueError("graph: give a scenario file or --model NAME|config.json|pkg.module:factory (one of them)")
    if seq_len is not None and not 1 <= seq_len <= MAX_DIMENSION:
        raise UserError(f"must be in 1..{MAX_DIMENSION}, got {seq_len}", field="--seq-len")
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
        return load_hf_config(path, flag="--model")
    if model not in PRESETS:
        raise UserError(f"unknown model '{model}'", field="--model",
                        fix="run `planner models` for presets, or pass a config.json or pkg.module:factory")
    return model_preset(model)


def _factory_graph(target: str, *, seq_len: int, batch: int) -> ModelGraph:
    """pkg.module:factory -> an nn.Module, or (module, example_inputs); built under meta."""
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        raise UserError(f"cannot load factory '{target}' ({err})", field="--model",
                        fix="use pkg.module:function, a preset name or a config.json") from None
    if not callable(factory):
        raise UserError(f"'{target}' is a {type(factory).__name__}, not a function", field="--model",
                        fix="name a function that returns an nn.Module or (module, inputs)")
    try:
        with torch.device("meta"):
            made = factory()
    except (Exception, SystemExit) as err:  # the user's code: say whose it is (sys.exit included)
        raise UserError(f"{target}() raised {type(err).__name__}: {' '.join(str(err).split())[:200]}",
                        field="--model", fix="call it without arguments, or fix the factory") from None
    module, inputs = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"--model: {target}() returned {type(module).__name__}; return an nn.Module or (module, inputs)")
    if inputs is None:
        inputs = (torch.zeros(batch, seq_len, dtype=torch.long),)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    # the module is traced in bf16, so its float inputs must be too (token ids stay integers)
    inputs = tuple(t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                   for t in inputs)
    try:
        return trace_module(module.to(torch.bfloat16), inputs, name=attr)
    except Exception as err:  # the user's module did not run on these inputs
        raise UserError(f"tracing {target}() failed ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                        field="--model", fix="return (module, example_inputs) that its forward accepts") from None


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
