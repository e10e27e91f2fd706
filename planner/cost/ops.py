"""The traced graph reduced to what the cost model prices: per block kind, a short list of OpCost.

Each op is tagged with the region that says how tensor/sequence/expert parallelism divides it.
Kernels the traced eager model runs unfused are priced as the fused kernels training stacks use
(the attention core as one attention call, each norm as one read-input / write-output pass).
Identical operators of a layer (one GEMM per routed expert, repeated residual adds) become one
OpCost with a count, so pricing a layer costs its distinct operators, not its traced ones.
Everything here is cached per graph (graphs are not mutated once extracted): the search prices
thousands of plans of one graph. OpCounts are the operators a layer dispatches as the eager model
runs them, what the host-time model (compute.host_times) charges per op.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache

from planner.graph import Layer, LayerKind, MoEStats, ModelGraph, OpKind, OpNode
from planner.hardware import HardwareProfile, IdentityKey

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
    count: int = 1  # identical operators in the layer this one stands for (numbers are per operator)
    # GEMMs: (m, n, k) of one traced call and whether TP splits k (row-parallel) rather than n;
    # attention: (seq_q, seq_kv, head_dim). Zeros when the shapes are unknown.
    dims: tuple[int, int, int] = (0, 0, 0)
    row_parallel: bool = False
    fp8: bool = False  # a transformer-block linear layer (FP8 recipes keep the LM head and router in 16-bit)


class GraphKey(IdentityKey):
    __slots__ = ()

    @property
    def graph(self) -> ModelGraph:
        return self.obj


@lru_cache(maxsize=64)
def layer_ops(key: GraphKey, fused: bool = False) -> dict[str, tuple[OpCost, ...]]:
    """Reduced operators of the first layer of each block kind (DAG nodes are named 'layer/i:op').

    `fused`: the stack fuses chains of pointwise ops (Megatron/TE fused kernels, torch.compile),
    so each run of consecutive elementwise ops of one region is one kernel (see _fused_bytes).
    """
    graph = key.graph
    first: dict[str, Layer] = {}
    for layer in graph.layers:
        first.setdefault(layer.block_kind, layer)
    wanted = {layer.name: [] for layer in first.values()}
    for node, data in graph.dag.nodes(data=True):
        owner = str(node).split("/", 1)[0]
        if owner in wanted and data.get("op") is not None:
            wanted[owner].append(data["op"])
    return {kind: _reduce(wanted[layer.name], layer, fused=fused, hidden=graph.hidden_size)
                  if wanted[layer.name] else _from_totals(layer)
            for kind, layer in first.items()}


def _reduce(ops: list[OpNode], layer: Layer, *, hidden: int, fused: bool = False) -> tuple[OpCost, ...]:
    attention = [op for op in ops if op.kind == OpKind.ATTENTION]
    norms: dict[str, list[OpNode]] = {}
    out = []
    run: list[OpNode] = []
    for op in ops:
        region = _region(op, layer.kind)
        if run and not (fused and op.kind == OpKind.ELEMENTWISE and _region(run[0], layer.kind) == region):
            out.append(_elementwise_run(run, layer))
            run = []
        if op.kind == OpKind.NORM and fused:
            norms.setdefault(op.module, []).append(op)
        elif op.kind == OpKind.NORM:  # eager: every traced op of the norm is its own kernel
            out.append(_cost(OpKind.NORM, [op], region=Region.SP, saved_region=Region.SP,
                             bytes_moved=op.bytes_read + op.bytes_written))
        elif op.kind == OpKind.ELEMENTWISE:
            run.append(op)
        elif op.kind != OpKind.ATTENTION:
            cost = _cost(op.kind, [op], region=region, saved_region=_saved_region(op, region),
                         bytes_moved=op.bytes_read + op.bytes_written)
            out.append(_with_gemm_dims(cost, op, layer, hidden=hidden) if op.kind in _GEMM_KINDS else cost)
    if run:
        out.append(_elementwise_run(run, layer))
    if attention:
        core = _cost(OpKind.ATTENTION, attention, region=Region.TP, saved_region=Region.TP,
                     bytes_moved=sum(op.bytes_read + op.bytes_written for op in attention))
        out.append(replace(core, dims=_attention_dims(attention)))
    for group in norms.values():  # fused norm: read the input once, write the output once
        out.append(_cost(OpKind.NORM, group, region=Region.SP, saved_region=Region.SP,
                         bytes_moved=2 * group[0].bytes_read))
    return _grouped(out)


_GEMM_KINDS = (OpKind.MATMUL, OpKind.EXPERT_MATMUL, OpKind.ROUTER)


def _elementwise_run(run: list[OpNode], layer: Layer) -> OpCost:
    """One kernel for consecutive pointwise ops: every intermediate result stays in registers, so
    the traffic is what the ops read and write minus each intermediate's write and re-read."""
    region = _region(run[0], layer.kind)
    reads, writes = sum(op.bytes_read for op in run), sum(op.bytes_written for op in run)
    inner = sum(op.bytes_written for op in run[:-1])
    moved = max(reads + writes - 2 * inner, run[0].bytes_read + run[-1].bytes_written)
    return _cost(OpKind.ELEMENTWISE, run, region=region, saved_region=_saved_region(run[0], region),
                 bytes_moved=moved)


def _with_gemm_dims(cost: OpCost, op: OpNode, layer: Layer, *, hidden: int) -> OpCost:
    """(m, n, k) from an mm's operands; row-parallel when it is a wo/w2 projection (or, inside
    the experts, the down projection: the one writing the hidden size from another width; a
    fine-grained expert's ffn is narrower than the hidden size, so width alone does not tell)."""
    shapes = op.input_shapes[-2:]  # addmm carries its bias first
    if len(shapes) != 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
        return cost
    (m, k), (_, n) = shapes
    down = n == hidden != k
    row = op.module.endswith(_ROW_PARALLEL) or (op.kind == OpKind.EXPERT_MATMUL and down)
    return replace(cost, dims=(m, n, k), row_parallel=row,
                   fp8=layer.kind == LayerKind.BLOCK and op.kind != OpKind.ROUTER)


def _attention_dims(ops: list[OpNode]) -> tuple[int, int, int]:
    """(seq_q, seq_kv, head_dim) from the first score product QK^T: (b*h, s_q, d) x (b*h, d, s_kv)."""
    for op in ops:
        shapes = op.input_shapes
        if len(shapes) == 2 and len(shapes[0]) == 3 and len(shapes[1]) == 3 and shapes[0][2] == shapes[1][1]:
            return shapes[0][1], shapes[1][2], shapes[0][2]
    return (0, 0, 0)


def _grouped(ops: list[OpCost]) -> tuple[OpCost, ...]:
    """Equal OpCosts merged into one with their count, in order of first appearance."""
    counts = Counter(ops)
    return tuple(replace(op, count=n) if n > 1 else op for op, n in counts.items())


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


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphSummary:
    """A graph reduced once for estimate(): the first layer of each block kind, where each kind's
    blocks sit, the ends, and the FLOP totals (summed in layer order, as the graph's own
    properties do), so pricing a plan never walks the layer list."""

    first: dict[str, Layer]  # block kind -> its first layer (layers of one kind are identical)
    num_blocks: int
    positions: dict[str, tuple[int, ...]]  # block kind -> its transformer blocks' indices among the blocks
    embedding_kinds: tuple[str, ...]  # block kinds of the layers before the first block
    head_kinds: tuple[str, ...]  # ... and after the last
    moe: MoEStats | None  # the first MoE layer's statistics
    fwd_flops: float  # whole model, traced sample
    bwd_flops: float
    full_recompute_flops: float  # forward FLOPs of every block (replayed by full recompute)
    selective_recompute_flops: float  # forward FLOPs of every block's attention core
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # estimate()'s per-graph memo

    def chunk_counts(self, blocks_per_chunk: list[int]) -> list[Counter[str]]:
        """Block kinds in each model chunk (embedding on the first, head on the last), keyed in
        order of first appearance like a Counter over the chunk's layers. Memoised: treat the
        result as read-only."""
        key = ("chunk_counts", tuple(blocks_per_chunk))
        if key not in self.memo:
            self.memo[key] = self._chunk_counts(blocks_per_chunk)
        return self.memo[key]

    def _chunk_counts(self, blocks_per_chunk: list[int]) -> list[Counter[str]]:
        chunks, start = [], 0
        for size in blocks_per_chunk:
            chunks.append(self._range_counts(start, start + size))
            start += size
        chunks[0] = Counter(self.embedding_kinds) + chunks[0] if self.embedding_kinds else chunks[0]
        chunks[-1].update(self.head_kinds)
        return chunks

    def _range_counts(self, start: int, stop: int) -> Counter[str]:
        found = []
        for kind, pos in self.positions.items():
            lo, hi = bisect_left(pos, start), bisect_left(pos, stop)
            if hi > lo:
                found.append((pos[lo], kind, hi - lo))
        return Counter({kind: n for _, kind, n in sorted(found)})


@lru_cache(maxsize=32)
def graph_summary(key: GraphKey) -> GraphSummary:
    graph = key.graph
    blocks = graph.blocks
    first: dict[str, Layer] = {}
    for layer in graph.layers:
        first.setdefault(layer.block_kind, layer)
    positions: dict[str, list[int]] = {}
    for i, layer in enumerate(blocks):
        positions.setdefault(layer.block_kind, []).append(i)
    return GraphSummary(
        first=first, num_blocks=len(blocks), positions={k: tuple(v) for k, v in positions.items()},
        embedding_kinds=tuple(layer.block_kind for layer in graph.layers if layer.kind == LayerKind.EMBEDDING),
        head_kinds=tuple(layer.block_kind for layer in graph.layers if layer.kind == LayerKind.HEAD),
        moe=next((layer.moe for layer in graph.layers if layer.moe is not None), None),
        fwd_flops=graph.fwd_flops, bwd_flops=graph.bwd_flops,
        full_recompute_flops=sum(layer.fwd_flops for layer in blocks),
        selective_recompute_flops=sum(layer.by_kind[OpKind.ATTENTION].fwd_flops for layer in blocks
                                      if OpKind.ATTENTION in layer.by_kind))


# -- operators a layer dispatches (the host-time model counts them: compute.host_times) ----------


@dataclass(frozen=True, slots=True)
class OpCounts:
    """Operators one layer of a block kind dispatches per forward, as the eager model runs them."""

    ops: int = 0  # everything outside the routed experts (a fused attention core counts once)
    expert_ops: int = 0  # inside the routed experts: an EP rank runs 1/ep of them
    tp_modules: int = 0  # GEMM and embedding modules that tensor parallelism turns into DTensor calls
    tp_column_modules: int = 0  # the column-parallel ones among them (their input gradients need a reduction)


@lru_cache(maxsize=32)
def op_counts(key: GraphKey) -> dict[str, OpCounts]:
    """OpCounts of the first layer of each block kind (DAG nodes carry their layer index)."""
    graph = key.graph
    first: dict[str, int] = {}
    for index, layer in enumerate(graph.layers):
        first.setdefault(layer.block_kind, index)
    ops: dict[int, list] = {index: [] for index in first.values()}
    for _, data in graph.dag.nodes(data=True):
        if data.get("layer") in ops and data.get("op") is not None:
            ops[data["layer"]].append(data["op"])
    return {kind: _count(ops[index]) for kind, index in first.items()}


def _count(ops: list) -> OpCounts:
    attention_modules = {op.module for op in ops if op.kind == OpKind.ATTENTION}
    expert = sum(op.kind == OpKind.EXPERT_MATMUL or op.module.endswith(".experts") for op in ops)
    other = sum(op.kind != OpKind.ATTENTION for op in ops) - expert + len(attention_modules)
    tp = {op.module for op in ops if op.kind in (OpKind.MATMUL, OpKind.EMBEDDING)
          and not op.module.endswith(_REPLICATED_MODULES)}
    column = {m for m in tp if not m.endswith(_ROW_MODULES)}
    return OpCounts(ops=other, expert_ops=expert, tp_modules=len(tp), tp_column_modules=len(column))


# MLA down-projections stay replicated under TP (see above); row-parallel modules reduce outputs.
_REPLICATED_MODULES = ("wq_a", "wkv_a")
_ROW_MODULES = ("wo", "w2", "tok_embeddings")


def extra_tp_reductions(graph: ModelGraph, *, block_kind: str, fused_inputs: int, hw: HardwareProfile) -> int:
    """Backward TP reductions per block beyond the `fused_inputs` a Megatron block does, when the
    profiled runtime reduces each column-parallel module's input gradient separately."""
    if hw.host is None or not hw.host.tp_reduce_per_module:
        return 0
    counts = op_counts(GraphKey(graph)).get(block_kind)
    return max(0, counts.tp_column_modules - fused_inputs) if counts else 0
