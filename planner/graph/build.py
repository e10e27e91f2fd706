"""Turns recorded traces into Layers and the OpNode DAG (the implementation behind graph.py).

A Layer's numbers are sums over its ops; its saved-activation variants follow Korthikanti et al.
2022 (arXiv 2205.05198, Sec. 4): `saved_bytes` is what autograd keeps with unfused attention;
`saved_bytes_selective` drops what the attention core made (scores, softmax, dropout mask and
output) and keeps the core's inputs instead (the paper's selective recompute: 34sbh for GPT);
`saved_bytes_flash` is selective plus the fp32 log-sum-exp flash attention keeps per row
(Dao et al. 2022), the core's output being shared with the output projection's saved input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx
import torch
from torch import nn

from planner.graph.types import BlockKind, KindTotals, Layer, LayerKind, ModelGraph, MoEStats, OpKind, OpNode
from planner.graph.trace import OpRecord, Trace, is_matmul, storage_key

_NORM_OPS = {"native_layer_norm", "_fused_rms_norm", "rms_norm", "layer_norm", "group_norm", "native_group_norm"}
_LOSS_OPS = {"_log_softmax", "log_softmax", "nll_loss_forward", "nll_loss2d_forward", "cross_entropy_loss"}
_ROUTER_NAMES = {"router", "gate"}


def classify(rec: OpRecord, *, moe_paths: frozenset[str]) -> OpKind:
    """The cost-model kind of one op, from where it ran and what it computed."""
    parts = rec.module.split(".")
    matmul = is_matmul(rec.op)
    if rec.in_attention:
        return OpKind.ATTENTION
    if rec.op == "embedding":
        return OpKind.EMBEDDING
    if rec.op in _LOSS_OPS:
        return OpKind.LOSS
    if any(p == "experts" for p in parts):
        return OpKind.EXPERT_MATMUL if matmul else OpKind.ELEMENTWISE
    if parts[-1] in _ROUTER_NAMES or rec.module in moe_paths:
        return OpKind.ROUTER
    if rec.op in _NORM_OPS or (rec.module_types and rec.module_types[-1].endswith("Norm")):
        return OpKind.NORM
    if matmul:
        return OpKind.MATMUL if rec.has_param else OpKind.ATTENTION
    return OpKind.OTHER if rec.estimated else OpKind.ELEMENTWISE


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerMeta:
    """What a Layer needs besides its ops: identity, parameters and MoE facts."""

    index: int
    name: str
    kind: LayerKind
    block_kind: BlockKind
    num_params: int
    num_active_params: int
    param_bytes: int
    input_bytes: float
    moe: MoEStats | None = None


def summarize(trace: Trace, recs: list[int], saved_keys: Iterable[int], meta: LayerMeta, *,
              moe_paths: frozenset[str] = frozenset()) -> tuple[Layer, list[OpNode]]:
    """One Layer and its OpNodes from the records `recs` and the storages it saved."""
    in_layer = set(recs)
    kinds = {i: classify(trace.records[i], moe_paths=moe_paths) for i in recs}
    saved_at: dict[int, float] = {}
    eager = selective = 0.0
    kept = set()
    for key in saved_keys:
        info = trace.saved[key]
        owner = info.producer if info.producer in in_layer else _first(trace.consumers.get(key, ()), in_layer)
        if owner is not None:
            saved_at[owner] = saved_at.get(owner, 0.0) + info.nbytes
        eager += info.nbytes
        if info.producer is None or not trace.records[info.producer].in_attention:
            selective += info.nbytes
            kept.add(key)
    selective += _attention_inputs_bytes(trace, recs, kept)
    flash = selective + _lse_bytes(trace.records[i] for i in recs if trace.records[i].in_attention)
    nodes = [_node(trace.records[i], kinds[i], meta.name, saved_at.get(i, 0.0)) for i in recs]
    layer = Layer(
        index=meta.index, name=meta.name, kind=meta.kind, block_kind=meta.block_kind, num_params=meta.num_params,
        num_active_params=meta.num_active_params, param_bytes=meta.param_bytes,
        fwd_flops=sum(n.fwd_flops for n in nodes), bwd_flops=sum(n.bwd_flops for n in nodes),
        bwd_weight_flops=sum(n.bwd_weight_flops for n in nodes), saved_bytes=eager,
        saved_bytes_flash=flash, saved_bytes_selective=selective, input_bytes=meta.input_bytes,
        by_kind=_by_kind(nodes), moe=meta.moe,
    )
    return layer, nodes


def _first(indices: Iterable[int], allowed: set[int]) -> int | None:
    return next((i for i in indices if i in allowed), None)


def _attention_inputs_bytes(trace: Trace, recs: list[int], kept: set[int]) -> float:
    """Storages the attention core reads from outside itself (q, k, v): kept under selective."""
    total = 0.0
    seen = set(kept)
    for i in recs:
        if not trace.records[i].in_attention:
            continue
        for key in trace.records[i].in_keys:
            producer = trace.producer.get(key)
            outside = producer is None or not trace.records[producer].in_attention
            if outside and key in trace.storage_bytes and key not in seen:
                seen.add(key)
                total += trace.storage_bytes[key]
    return total


def _lse_bytes(attention_recs: Iterable[OpRecord]) -> float:
    """fp32 log-sum-exp per query row and head: what flash attention keeps instead of P."""
    return sum(4.0 * _numel(r.output_shapes[0]) / r.output_shapes[0][-1]
               for r in attention_recs if r.op in ("_softmax", "softmax", "_safe_softmax"))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _node(rec: OpRecord, kind: OpKind, layer_name: str, saved: float) -> OpNode:
    return OpNode(
        name=f"{layer_name}/{rec.index}:{rec.op}", kind=kind, target=rec.target, module=rec.module,
        input_shapes=rec.input_shapes, output_shapes=rec.output_shapes, dtype=rec.dtype,
        fwd_flops=rec.fwd_flops, bwd_flops=rec.bwd_flops, bytes_read=rec.bytes_read,
        bytes_written=rec.bytes_written, param_bytes=rec.param_bytes, saved_bytes=saved,
        estimated=rec.estimated, bwd_weight_flops=rec.bwd_weight_flops,
    )


def _by_kind(nodes: list[OpNode]) -> dict[OpKind, KindTotals]:
    acc: dict[OpKind, list[float]] = {}
    for n in nodes:
        t = acc.setdefault(n.kind, [0.0, 0.0, 0.0, 0.0])
        t[0] += n.fwd_flops
        t[1] += n.bwd_flops
        t[2] += n.bytes_read + n.bytes_written
        t[3] += n.saved_bytes
    return {k: KindTotals(fwd_flops=a, bwd_flops=b, bytes_moved=c, saved_bytes=d) for k, (a, b, c, d) in acc.items()}


def relabel(layer: Layer, nodes: list[OpNode], *, index: int, name: str) -> tuple[Layer, list[OpNode]]:
    """A replica of a traced block at another position: same numbers, its own FQNs."""
    old = layer.name
    moved = [dataclasses.replace(n, name=name + n.name[len(old):], module=_swap_prefix(n.module, old, name))
             for n in nodes]
    return dataclasses.replace(layer, index=index, name=name), moved


def _swap_prefix(module: str, old: str, new: str) -> str:
    if module == old or module.startswith(old + "."):
        return new + module[len(old):]
    return module


def local_edges(trace: Trace, recs: list[int]) -> list[tuple[int, int]]:
    """Producer -> consumer edges among `recs`, as positions into that list."""
    pos = {r: k for k, r in enumerate(recs)}
    return [(pos[p], pos[r]) for r in recs for p in trace.records[r].preds if p in pos]


def moe_stats(moe: nn.Module, *, top_k: int, num_experts: int, hidden_size: int, dtype_bytes: int,
              capacity_factor: float | None) -> MoEStats:
    """Expert FLOPs per token are 2 x (one expert's parameters): one multiply-add per weight."""
    experts = next(m for n, m in moe.named_children() if n == "experts")
    expert_params = sum(p.numel() for p in experts.parameters()) // num_experts
    shared = sum(p.numel() for n, m in moe.named_children() if "shared" in n for p in m.parameters())
    return MoEStats(num_experts=num_experts, top_k=top_k, expert_params=expert_params, shared_params=shared,
                    expert_fwd_flops_per_token=2.0 * expert_params,
                    dispatch_bytes_per_token=float(hidden_size * top_k * dtype_bytes),
                    capacity_factor=capacity_factor)


def active_params(total: int, moe: MoEStats | None) -> int:
    """Routed experts count top_k times instead of num_experts times."""
    if moe is None:
        return total
    return total - (moe.num_experts - moe.top_k) * moe.expert_params


def assemble(pieces: list[tuple[Layer, list[OpNode], list[tuple[int, int]], list[int], int | None]], *,
             graph_fields: dict) -> ModelGraph:
    """Chain layer pieces (layer, nodes, local edges, entry positions, exit position) into one DAG.

    Each node carries its OpNode under "op" and its Layer.index under "layer".
    """
    dag = nx.DiGraph()
    prev_exit: str | None = None
    for layer, nodes, edges, entries, exit_pos in pieces:
        names = [n.name for n in nodes]
        dag.add_nodes_from((n.name, {"op": n, "layer": layer.index}) for n in nodes)
        dag.add_edges_from((names[a], names[b]) for a, b in edges)
        if prev_exit is not None:
            dag.add_edges_from((prev_exit, names[e]) for e in entries)
        if exit_pos is not None:
            prev_exit = names[exit_pos]
    return ModelGraph(dag=dag, layers=[p[0] for p in pieces], **graph_fields)


def param_count(modules: Iterable[nn.Module | None]) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        for p in (m.parameters() if m is not None else ()):
            if storage_key(p) not in seen:
                seen.add(storage_key(p))
                total += p.numel()
    return total


def dtype_bytes(module: nn.Module) -> int:
    return next((p.element_size() for p in module.parameters() if p.is_floating_point()),
                torch.tensor([], dtype=torch.bfloat16).element_size())
