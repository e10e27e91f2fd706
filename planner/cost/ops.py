"""The traced graph reduced to what the cost model prices: per block kind, a short list of OpCost.

Each op is tagged with the region that says how tensor/sequence/expert parallelism divides it.
Kernels the traced eager model runs unfused are priced as the fused kernels training stacks use
(the attention core as one attention call, each norm as one read-input / write-output pass).
Cached per graph: the search prices thousands of plans of one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from planner.graph import Layer, LayerKind, ModelGraph, OpKind, OpNode

# Column-parallel GEMMs produce head/column-split outputs; row-parallel ones produce the full
# hidden state (replicated without SP); MLA down-projections stay replicated (Megatron MLA).
_ROW_PARALLEL = ("wo", "w2")
_REPLICATED_GEMMS = ("wq_a", "wkv_a")
_TP_REGIONS = (".attention.", ".feed_forward.", ".moe.")


class Region(StrEnum):
    """How an operator's work divides across the tensor-parallel group."""

    TP = "tp"  # head/column/row split: always / tp
    SP = "sp"  # replicated unless sequence parallel is on (norms, residual adds, dropout)
    EXPERT = "expert"  # routed experts: / (ep * etp) of the stage's tokens, with imbalance


@dataclass(frozen=True, slots=True)
class OpCost:
    """One operator reduced to what timing needs (traced-sample units)."""

    kind: OpKind
    region: Region
    fwd_flops: float
    bwd_flops: float
    bwd_weight_flops: float
    bytes_moved: float
    saved_bytes: float
    saved_region: Region  # where the tensors this op produces (and backward keeps) live


class GraphKey:
    """Identity-hashed handle so lru_cache can hold per-graph summaries (graphs are mutable)."""

    __slots__ = ("graph",)

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph

    def __hash__(self) -> int:
        return id(self.graph)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphKey) and other.graph is self.graph


@lru_cache(maxsize=32)
def layer_ops(key: GraphKey) -> dict[str, tuple[OpCost, ...]]:
    """Reduced operators of the first layer of each block kind (DAG nodes are named 'layer/i:op')."""
    graph = key.graph
    first: dict[str, Layer] = {}
    for layer in graph.layers:
        first.setdefault(layer.block_kind, layer)
    wanted = {layer.name: [] for layer in first.values()}
    for node, data in graph.dag.nodes(data=True):
        owner = str(node).split("/", 1)[0]
        if owner in wanted and data.get("op") is not None:
            wanted[owner].append(data["op"])
    return {kind: _reduce(wanted[layer.name], layer) if wanted[layer.name] else _from_totals(layer)
            for kind, layer in first.items()}


def _reduce(ops: list[OpNode], layer: Layer) -> tuple[OpCost, ...]:
    attention = [op for op in ops if op.kind == OpKind.ATTENTION]
    norms: dict[str, list[OpNode]] = {}
    out = []
    for op in ops:
        if op.kind == OpKind.NORM:
            norms.setdefault(op.module, []).append(op)
        elif op.kind != OpKind.ATTENTION:
            region = _region(op, layer.kind)
            out.append(_cost(op.kind, [op], region=region, saved_region=_saved_region(op, region),
                             bytes_moved=op.bytes_read + op.bytes_written))
    if attention:
        out.append(_cost(OpKind.ATTENTION, attention, region=Region.TP, saved_region=Region.TP,
                         bytes_moved=sum(op.bytes_read + op.bytes_written for op in attention)))
    for group in norms.values():  # fused norm: read the input once, write the output once
        out.append(_cost(OpKind.NORM, group, region=Region.SP, saved_region=Region.SP,
                         bytes_moved=2 * group[0].bytes_read))
    return tuple(out)


def _cost(kind: OpKind, ops: list[OpNode], *, region: Region, saved_region: Region, bytes_moved: float) -> OpCost:
    return OpCost(kind=kind, region=region, fwd_flops=sum(op.fwd_flops for op in ops),
                  bwd_flops=sum(op.bwd_flops for op in ops),
                  bwd_weight_flops=sum(getattr(op, "bwd_weight_flops", 0.0) for op in ops),
                  bytes_moved=bytes_moved, saved_bytes=sum(op.saved_bytes for op in ops), saved_region=saved_region)


def _region(op: OpNode, layer_kind: LayerKind) -> Region:
    match op.kind:
        case OpKind.EXPERT_MATMUL:
            return Region.EXPERT
        case OpKind.MATMUL:
            return Region.SP if op.module.endswith(_REPLICATED_GEMMS) else Region.TP
        case OpKind.ATTENTION | OpKind.LOSS:
            return Region.TP
        case OpKind.ELEMENTWISE if layer_kind == LayerKind.HEAD:
            return Region.TP  # casts of vocab-parallel logits
        case OpKind.ELEMENTWISE:
            return Region.TP if any(r in f".{op.module}." for r in _TP_REGIONS) else Region.SP
        case _:
            return Region.SP


def _saved_region(op: OpNode, region: Region) -> Region:
    """Where the op's output lives: a row-parallel GEMM's output is the full (replicated) hidden state."""
    if op.kind == OpKind.MATMUL and op.module.endswith(_ROW_PARALLEL):
        return Region.SP
    return region


def _from_totals(layer: Layer) -> tuple[OpCost, ...]:
    """Fallback when the DAG holds no operators for a layer: one op per kind from its totals."""
    out = []
    for kind, t in layer.by_kind.items():
        region = Region.EXPERT if kind == OpKind.EXPERT_MATMUL else (
            Region.SP if kind in (OpKind.NORM, OpKind.EMBEDDING, OpKind.ROUTER) else Region.TP)
        weight = t.bwd_flops / 2 if kind in (OpKind.MATMUL, OpKind.EXPERT_MATMUL, OpKind.ROUTER) else 0.0
        out.append(OpCost(kind=kind, region=region, fwd_flops=t.fwd_flops, bwd_flops=t.bwd_flops,
                          bwd_weight_flops=weight, bytes_moved=t.bytes_moved, saved_bytes=t.saved_bytes,
                          saved_region=region))
    return tuple(out)
