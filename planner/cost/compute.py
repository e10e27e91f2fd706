"""Per-layer compute time for each pass (forward, backward-input, backward-weight, recompute).

Operators come from the traced graph: each is split by the plan (tensor, sequence, context and
expert parallelism), scaled from the traced sample to the micro-batch, and timed on the
roofline of the hardware profile: GEMMs and attention at efficiency(FLOPs of one call), the rest
at achieved memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from planner.graph import Layer, LayerKind, ModelGraph, OpKind, OpNode
from planner.hardware import HardwareProfile
from planner.plan import Plan, Recompute
from planner.scenario import Precision

# FlashAttention's backward recomputes the attention matrix: 5 GEMM-sized products instead of
# the 4 an autograd count reports (Dao 2023, FlashAttention-2, Sec. 3.1).
FLASH_BWD_FLOPS_FACTOR = 1.25
# A memory-bound op's backward reads the saved input and the output gradient and writes the
# input gradient: about twice the forward's traffic.
MEMORY_BOUND_BWD_BYTES_FACTOR = 2.0
# Eager (pre-FlashAttention) attention materialises the b*a*s^2 score matrix: bytes moved per
# score element. Forward: QK^T writes fp16 scores (2), fused scale-mask-softmax reads and writes
# (4), dropout reads, writes its output and a 1-byte mask (5), AV reads (2) = 13. Backward: the
# mirror image with gradients plus the saved softmax/mask re-read = 21 (Megatron-LM 2021-22 kernels,
# Korthikanti et al. 2022 Sec. 4.1 lists the same tensors).
EAGER_SCORE_BYTES_FWD = 13.0
EAGER_SCORE_BYTES_BWD = 21.0
# Dropless MoE: the busiest expert rank gets ~10% more tokens than the mean with an auxiliary
# balance loss (Switch Transformer, Fedus et al. 2021, Fig. 9; DeepSeek-V3 report Sec. 2.1.2).
DROPLESS_IMBALANCE = 1.10
# Modules that stay replicated across tensor-parallel ranks (MLA low-rank down projections).
_REPLICATED_GEMMS = ("wq_a", "wkv_a")
_ROW_PARALLEL = ("wo", "w2")
_TP_REGIONS = (".attention.", ".feed_forward.", ".moe.")


class Region(StrEnum):
    """How an operator's work divides across the tensor-parallel group."""

    TP = "tp"  # head/column/row split: always / tp
    SP = "sp"  # replicated unless sequence parallel is on (norms, residual adds, dropout)
    EXPERT = "expert"  # routed experts: / (ep * etp) of the stage's tokens, with imbalance


@dataclass(frozen=True, slots=True)
class OpCost:
    """One traced operator reduced to what timing needs (traced-sample units)."""

    kind: OpKind
    region: Region
    fwd_flops: float
    bwd_flops: float
    bytes_moved: float
    saved_bytes: float
    has_weight: bool
    saved_region: Region  # where the saved tensor lives: a column-parallel GEMM keeps its full input


@dataclass(frozen=True, slots=True)
class PassTimes:
    """Seconds for one micro-batch through one layer on one GPU."""

    fwd_s: float = 0.0
    bwd_input_s: float = 0.0
    bwd_weight_s: float = 0.0
    recompute_s: float = 0.0
    attention_fwd_s: float = 0.0  # the part CP ring traffic overlaps with
    attention_bwd_s: float = 0.0

    def __add__(self, other: PassTimes) -> PassTimes:
        return PassTimes(*(a + b for a, b in zip(self._tuple(), other._tuple(), strict=True)))

    def __mul__(self, k: float) -> PassTimes:
        return PassTimes(*(a * k for a in self._tuple()))

    def _tuple(self) -> tuple[float, ...]:
        return (self.fwd_s, self.bwd_input_s, self.bwd_weight_s, self.recompute_s,
                self.attention_fwd_s, self.attention_bwd_s)

    @property
    def bwd_s(self) -> float:
        return self.bwd_input_s + self.bwd_weight_s + self.recompute_s


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
    """Operators of one representative layer per block kind, from the DAG (or the kind totals)."""
    graph = key.graph
    by_layer: dict[int, list[OpCost]] = {}
    for _, data in graph.dag.nodes(data=True):
        op = data.get("op")
        layer = _owner(op.module, graph) if op is not None else None
        if layer is not None:
            by_layer.setdefault(layer.index, []).append(_op_cost(op))
    ops: dict[str, tuple[OpCost, ...]] = {}
    for layer in graph.layers:
        if layer.block_kind not in ops and layer.index in by_layer:
            ops[layer.block_kind] = tuple(by_layer[layer.index])
    for layer in graph.layers:
        ops.setdefault(layer.block_kind, _ops_from_totals(layer))
    return ops


def _owner(module: str, graph: ModelGraph) -> Layer | None:
    """The Layer an operator belongs to, by torchtitan FQN: layers.<i>.*, tok/pos embeddings, else head."""
    parts = module.split(".")
    wanted = LayerKind.HEAD
    if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
        blocks = graph.blocks
        return blocks[int(parts[1])] if int(parts[1]) < len(blocks) else None
    if parts[0] in ("tok_embeddings", "pos_embeddings"):
        wanted = LayerKind.EMBEDDING
    return next((layer for layer in graph.layers if layer.kind == wanted), None)


def _op_cost(op: OpNode) -> OpCost:
    region = _region(op.kind, op.module)
    return OpCost(kind=op.kind, region=region, fwd_flops=op.fwd_flops, bwd_flops=op.bwd_flops,
                  bytes_moved=op.bytes_read + op.bytes_written, saved_bytes=op.saved_bytes,
                  has_weight=op.param_bytes > 0, saved_region=_saved_region(op.kind, op.module, region))


def _saved_region(kind: OpKind, module: str, region: Region) -> Region:
    """Column-parallel GEMMs save their replicated input (Korthikanti's 10sbh term); SP shards it."""
    if kind in (OpKind.MATMUL, OpKind.ROUTER) and not module.endswith(_ROW_PARALLEL):
        return Region.SP
    return region


def _region(kind: OpKind, module: str) -> Region:
    match kind:
        case OpKind.EXPERT_MATMUL:
            return Region.EXPERT
        case OpKind.MATMUL:
            return Region.SP if module.endswith(_REPLICATED_GEMMS) else Region.TP
        case OpKind.ATTENTION | OpKind.LOSS:
            return Region.TP
        case OpKind.ELEMENTWISE:
            inside = any(r in f".{module}." for r in _TP_REGIONS) and "norm" not in module.rsplit(".", 1)[-1]
            return Region.TP if inside else Region.SP
        case _:
            return Region.SP


def _ops_from_totals(layer: Layer) -> tuple[OpCost, ...]:
    """Fallback when the DAG holds no operators for a layer: one op per kind from its totals."""
    out = []
    for kind, t in layer.by_kind.items():
        module = "head.output" if layer.kind == LayerKind.HEAD else ".attention."
        region = _region(kind, module)
        out.append(OpCost(kind=kind, region=region, fwd_flops=t.fwd_flops, bwd_flops=t.bwd_flops,
                          bytes_moved=t.bytes_moved, saved_bytes=t.saved_bytes,
                          has_weight=kind in (OpKind.MATMUL, OpKind.EXPERT_MATMUL, OpKind.ROUTER),
                          saved_region=region))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    """How one micro-batch of one layer divides over a GPU: everything timing needs from the plan."""

    batch_scale: float  # micro-batch sequences / traced sequences
    tp: int
    cp: int
    ep: int
    etp: int
    sp: bool
    num_experts: int
    imbalance: float
    precision: Precision
    recompute: Recompute
    flash: bool  # fused attention; False = eager softmax over materialised scores
    score_elements: float  # attention scores per layer per micro-batch on one GPU (eager only)

    def work_share(self, region: Region) -> float:
        """Fraction of the traced op's work (scaled to the micro-batch) one GPU does."""
        match region:
            case Region.TP:
                return self.batch_scale / (self.tp * self.cp)
            case Region.SP:
                return self.batch_scale / (self.cp * (self.tp if self.sp else 1))
            case Region.EXPERT:
                return self.batch_scale * self.imbalance / (self.tp * self.cp)

    def calls(self, op: OpCost) -> float:
        """How many kernel launches the GPU's share is cut into (per-expert GEMMs, CP ring steps)."""
        if op.region == Region.EXPERT:
            return max(1.0, self.num_experts / self.ep)
        return float(self.cp) if op.kind == OpKind.ATTENTION else 1.0


def split_for(plan: Plan, *, graph: ModelGraph, precision: Precision, flash: bool = True) -> Split:
    d = plan.dims
    heads = graph.num_attention_heads / d.tp
    scores = plan.micro_batch_size * heads * graph.seq_len * graph.seq_len / d.cp
    moe = next((layer.moe for layer in graph.layers if layer.moe is not None), None)
    imbalance = DROPLESS_IMBALANCE
    if moe is not None and moe.capacity_factor is not None:
        imbalance = min(moe.capacity_factor, DROPLESS_IMBALANCE)
    return Split(batch_scale=plan.micro_batch_size / graph.sample_batch, tp=d.tp, cp=d.cp, ep=d.ep, etp=d.etp,
                 sp=plan.sequence_parallel, num_experts=moe.num_experts if moe else 1, imbalance=imbalance,
                 precision=precision, recompute=plan.recompute, flash=flash, score_elements=scores)


def op_times(op: OpCost, *, split: Split, hw: HardwareProfile) -> PassTimes:
    share = split.work_share(op.region)
    fwd_flops, bwd_flops = op.fwd_flops * share, op.bwd_flops * share
    match op.kind:
        case OpKind.MATMUL | OpKind.EXPERT_MATMUL | OpKind.ROUTER:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            rate = per_call / hw.matmul_s(per_call, precision=split.precision)
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops / rate
            weight_share = 0.5 if op.has_weight else 0.0  # dgrad and wgrad are equal-size GEMMs
            return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s * (1 - weight_share), bwd_weight_s=bwd_s * weight_share)
        case OpKind.ATTENTION if split.flash:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            rate = per_call / hw.attention_s(per_call, precision=split.precision)
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops * FLASH_BWD_FLOPS_FACTOR / rate
            return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)
        case OpKind.ATTENTION:
            return _eager_attention(fwd_flops, bwd_flops, split=split, hw=hw)
        case _:
            fwd_s = hw.memory_bound_s(op.bytes_moved * share)
            return PassTimes(fwd_s=fwd_s, bwd_input_s=fwd_s * MEMORY_BOUND_BWD_BYTES_FACTOR)


def _eager_attention(fwd_flops: float, bwd_flops: float, *, split: Split, hw: HardwareProfile) -> PassTimes:
    """Two batched GEMMs (QK^T, AV) plus memory-bound passes over the score matrix."""
    if fwd_flops <= 0:
        return PassTimes()
    gemm = fwd_flops / 2
    rate = gemm / hw.matmul_s(gemm, precision=split.precision)
    fwd_s = fwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_FWD * split.score_elements)
    bwd_s = bwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_BWD * split.score_elements)
    return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)


def layer_times(ops: tuple[OpCost, ...], *, split: Split, hw: HardwareProfile, recomputed: bool) -> PassTimes:
    """Sum of operator times for one layer, plus what recompute replays before its backward."""
    total = PassTimes()
    for op in ops:
        total = total + op_times(op, split=split, hw=hw)
    if not recomputed:
        return total
    match split.recompute:
        case Recompute.FULL:
            extra = total.fwd_s
        case Recompute.SELECTIVE:
            extra = total.attention_fwd_s
        case Recompute.NONE:
            extra = 0.0
    return PassTimes(fwd_s=total.fwd_s, bwd_input_s=total.bwd_input_s, bwd_weight_s=total.bwd_weight_s,
                     recompute_s=extra, attention_fwd_s=total.attention_fwd_s, attention_bwd_s=total.attention_bwd_s)


def block_kind_times(graph: ModelGraph, *, split: Split, hw: HardwareProfile) -> dict[str, PassTimes]:
    """PassTimes of each block kind ("dense", "moe", "embedding", "head") for one micro-batch."""
    out = {}
    for kind, ops in layer_ops(GraphKey(graph)).items():
        recomputed = kind not in ("embedding", "head")
        out[kind] = layer_times(ops, split=split, hw=hw, recomputed=recomputed)
    return out


def optimizer_s(num_params: float, *, state_bytes: float, grad_bytes: float, param_bytes: float,
                hw: HardwareProfile) -> float:
    """Adam-style update is memory bound: read grad + state, write state + low-precision weights."""
    traffic = num_params * (grad_bytes + 2 * state_bytes + param_bytes)
    return hw.memory_bound_s(traffic)
