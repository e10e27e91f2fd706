"""Traces a user's own nn.Module (or a Hugging Face model) whole and groups its ops into Layers.

Blocks are the children of the largest nn.ModuleList/ModuleDict (`model.layers`, `h`, ...);
ops before the first block form the embedding layer, ops after the last one the head. A
parameter belongs to the layer that first reads it (so a tied LM head is not counted twice).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import networkx as nx
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from planner.graph import build as gb
from planner.graph.types import BlockKind, LayerKind, ModelGraph, MoEStats
from planner.graph.trace import Trace, storage_key, trace_fn


def trace_module(module: nn.Module, example_inputs: Any, *, name: str,
                 loss: Callable[[Any], torch.Tensor] | None = None) -> ModelGraph:
    """Trace `module(*example_inputs)` (a tuple, or a dict of keyword arguments) on meta.

    `loss`, when given, maps the module's output to a scalar and is traced as part of the head.
    A module with real weights is copied to meta first; the caller's module is left untouched.
    """
    if any(not p.is_meta for p in module.parameters()):
        module = copy.deepcopy(module).to("meta")
    was_training = module.training
    module.train()
    inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, example_inputs)
    call = (lambda: module(**inputs)) if isinstance(inputs, dict) else (lambda: module(*inputs))
    with _training_settings(module):
        trace = trace_fn(module, (lambda: loss(call())) if loss is not None else call)
    module.train(was_training)
    blocks = _find_blocks(module)
    owner = _Owners(trace, blocks)
    return _graph(module, trace, owner, name=name, inputs=inputs)


@contextlib.contextmanager
def _training_settings(module: nn.Module) -> Iterator[None]:
    """Hugging Face models: no KV cache while training (it would add cache ops to the trace)."""
    config = getattr(module, "config", None)
    old = getattr(config, "use_cache", None)
    if config is not None and old is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and old is not None:
            config.use_cache = old


def _find_blocks(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of the repeated-block container with the most parameters."""
    best: list[tuple[str, nn.Module]] = []
    best_params = -1
    for path, child in module.named_modules():
        if isinstance(child, nn.ModuleList | nn.ModuleDict) and len(child) > 1:
            params = sum(p.numel() for p in child.parameters())
            if params > best_params:
                prefix = f"{path}." if path else ""
                best, best_params = [(prefix + k, m) for k, m in child.named_children()], params
    return best


class _Owners:
    """Which layer (an int slot) each record and each saved storage belongs to."""

    EMBED, HEAD = -1, 10**9

    def __init__(self, trace: Trace, blocks: list[tuple[str, nn.Module]]) -> None:
        self.block_names = [n for n, _ in blocks]
        self._slot = {n: i for i, n in enumerate(self.block_names)}
        self._prefix = self.block_names[0].rsplit(".", 1)[0] + "." if self.block_names and "." in self.block_names[0] else ""
        in_block = [i for i, r in enumerate(trace.records) if self._block(r.module) is not None]
        self.first_block = in_block[0] if in_block else len(trace.records)
        self.records = [self.of(r.module, i) for i, r in enumerate(trace.records)]

    def _block(self, module: str) -> int | None:
        if not self.block_names:
            return 0
        if not module.startswith(self._prefix):
            return None
        return self._slot.get(self._prefix + module[len(self._prefix):].split(".", 1)[0])

    def of(self, module: str, position: int) -> int:
        slot = self._block(module)
        if slot is not None:
            return slot
        return self.EMBED if position <= self.first_block else self.HEAD  # saves land one past their op


def _graph(module: nn.Module, trace: Trace, owner: _Owners, *, name: str, inputs: Any) -> ModelGraph:
    slots = sorted(set(owner.records))
    recs = {s: [i for i, o in enumerate(owner.records) if o == s] for s in slots}
    saved: dict[int, list[int]] = {s: [] for s in slots}
    for key, info in trace.saved.items():
        saved.setdefault(owner.of(info.module, info.position), []).append(key)
    params = _params_by_slot(module, trace, owner)
    width = gb.dtype_bytes(module)
    hidden = _hidden_size(module)
    first_input = next((t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)), None)
    batch, seq = (first_input.shape[0], first_input.shape[1]) if first_input is not None and first_input.dim() > 1 else (1, 1)
    dag = nx.DiGraph()
    layers = []
    names: dict[int, str] = {}
    raw_bytes = float(sum(t.numel() * t.element_size() for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)))
    for index, slot in enumerate(s for s in slots if recs[s]):
        input_bytes = raw_bytes if slot == _Owners.EMBED else float(batch * seq * hidden * width)
        meta = _meta(module, owner, slot, index, params.get(slot, 0), width=width, hidden=hidden,
                     input_bytes=input_bytes)
        layer, nodes = gb.summarize(trace, recs[slot], saved.get(slot, ()), meta,
                                    moe_paths=frozenset([_moe_path(module, owner, slot) or ""]) - {""})
        layers.append(layer)
        for rec_index, node in zip(recs[slot], nodes, strict=True):
            names[rec_index] = node.name
            dag.add_node(node.name, op=node, layer=layer.index)
    dag.add_edges_from((names[p], names[i]) for i, r in enumerate(trace.records) for p in r.preds)
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", 0) or 0
    return ModelGraph(dag=dag, layers=layers, seq_len=int(seq), sample_batch=int(batch), dtype_bytes=width,
                      hidden_size=hidden, num_attention_heads=heads,
                      num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
                      vocab_size=getattr(config, "vocab_size", 0) or 0, name=name, warnings=trace.warnings)


def _params_by_slot(module: nn.Module, trace: Trace, owner: _Owners) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in module.parameters():
        readers = trace.consumers.get(storage_key(p))
        if readers:
            slot = owner.records[readers[0]]
            out[slot] = out.get(slot, 0) + p.numel()
    return out


def _meta(module: nn.Module, owner: _Owners, slot: int, index: int, total: int, *, width: int, hidden: int,
          input_bytes: float) -> gb.LayerMeta:
    match slot:
        case _Owners.EMBED:
            kind, block_kind, name = LayerKind.EMBEDDING, BlockKind.EMBEDDING, "embedding"
        case _Owners.HEAD:
            kind, block_kind, name = LayerKind.HEAD, BlockKind.HEAD, "head"
        case _:
            kind, name = LayerKind.BLOCK, owner.block_names[slot] if owner.block_names else "model"
    moe = _moe(module, owner, slot, width=width, hidden=hidden) if kind == LayerKind.BLOCK else None
    if kind == LayerKind.BLOCK:
        block_kind = BlockKind.MOE if moe is not None else BlockKind.DENSE
    return gb.LayerMeta(index=index, name=name, kind=kind, block_kind=block_kind, num_params=total,
                        num_active_params=gb.active_params(total, moe), param_bytes=total * width,
                        input_bytes=input_bytes, moe=moe)


def _moe_path(module: nn.Module, owner: _Owners, slot: int) -> str | None:
    """FQN of the module holding an `experts` child inside block `slot`, if any."""
    if not owner.block_names or slot in (_Owners.EMBED, _Owners.HEAD):
        return None
    block = module.get_submodule(owner.block_names[slot])
    for path, child in block.named_modules():
        if any(n == "experts" for n, _ in child.named_children()):
            return f"{owner.block_names[slot]}.{path}" if path else owner.block_names[slot]
    return None


def _moe(module: nn.Module, owner: _Owners, slot: int, *, width: int, hidden: int) -> MoEStats | None:
    path = _moe_path(module, owner, slot)
    if path is None:
        return None
    moe = module.get_submodule(path)
    experts = moe.get_submodule("experts")
    num = getattr(experts, "num_experts", None) or (len(experts) if isinstance(experts, nn.ModuleList) else
                                                     next(p.shape[0] for p in experts.parameters()))
    top_k = _first_attr([moe, *moe.children()], ("top_k", "num_experts_per_tok"))
    return gb.moe_stats(moe, top_k=int(top_k or 1), num_experts=int(num), hidden_size=hidden, dtype_bytes=width,
                        capacity_factor=getattr(moe, "capacity_factor", None))


def _first_attr(objs: list[Any], names: tuple[str, ...]) -> Any:
    return next((getattr(o, n) for o in objs for n in names if isinstance(getattr(o, n, None), int)), None)


def _hidden_size(module: nn.Module) -> int:
    config = getattr(module, "config", None)
    if getattr(config, "hidden_size", None):
        return int(config.hidden_size)
    emb = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
    return emb.embedding_dim if emb is not None else 0
