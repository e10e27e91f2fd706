"""Traces an nn.Module on the meta device into a networkx DAG of OpNode and groups it into Layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import networkx as nx



class OpKind(StrEnum):
    """What an operator is, for the cost model: each kind is split and timed differently."""

    MATMUL = "matmul"  # dense GEMM on activations x weights: split by tp (and cp/sequence)
    ATTENTION = "attention"  # the s x s core (QK^T, softmax, AV): split by heads (tp) and cp
    NORM = "norm"  # RMSNorm/LayerNorm: memory bound, split by tp only with sequence parallel
    ELEMENTWISE = "elementwise"  # activations, residual adds, rope, dropout: memory bound
    EMBEDDING = "embedding"  # token/position lookup
    LOSS = "loss"  # log-softmax + cross-entropy over the vocabulary
    ROUTER = "router"  # MoE gate GEMM + top-k
    EXPERT_MATMUL = "expert_matmul"  # GEMMs inside routed experts: split by ep/etp
    OTHER = "other"  # unsupported ops, estimated from shapes


class LayerKind(StrEnum):
    EMBEDDING = "embedding"
    BLOCK = "block"
    HEAD = "head"  # final norm + LM head + loss


class BlockKind(StrEnum):
    """Layers of one block kind share their structure (ops, FLOPs, saved bytes), so the cost model
    prices each kind once."""

    EMBEDDING = "embedding"
    DENSE = "dense"
    MOE = "moe"
    HEAD = "head"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpNode:
    """One traced operator; plain numbers only, for the sample the graph was traced with."""

    name: str
    kind: OpKind
    target: str  # aten op name, e.g. "aten.mm.default"
    module: str  # owning module path, e.g. "layers.3.attention.wq"
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    dtype: str
    fwd_flops: float
    bwd_flops: float
    bytes_read: float
    bytes_written: float
    param_bytes: float
    saved_bytes: float  # activation bytes kept for backward (eager attention accounting)
    estimated: bool = False  # True when the op was not understood and costed from shapes
    bwd_weight_flops: float = 0.0  # the weight-gradient share of bwd_flops


@dataclass(frozen=True, slots=True, kw_only=True)
class KindTotals:
    """Totals of one OpKind inside a layer (for the traced sample)."""

    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    bytes_moved: float = 0.0  # read + written, forward pass
    saved_bytes: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MoEStats:
    """What the cost model and the expert-placement ILP need about one MoE layer."""

    num_experts: int
    top_k: int
    expert_params: int  # parameters of one routed expert
    shared_params: int  # parameters of the shared expert(s), replicated like dense weights
    expert_fwd_flops_per_token: float  # one routed expert applied to one token
    dispatch_bytes_per_token: float  # hidden vector x top_k, one direction of the all-to-all
    capacity_factor: float | None  # None = dropless


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    """A pipeline-partitionable unit: the embedding, one transformer block, or the head.

    FLOPs and bytes are for the traced sample (`ModelGraph.sample_batch` sequences of
    `ModelGraph.seq_len` tokens); the cost model scales them to the micro-batch.
    """

    index: int
    name: str
    kind: LayerKind
    block_kind: BlockKind
    num_params: int
    num_active_params: int  # per token (routed experts counted top_k times, not num_experts)
    param_bytes: int
    fwd_flops: float
    bwd_flops: float  # backward-input + backward-weight
    bwd_weight_flops: float  # the backward-weight share (for zero-bubble schedules)
    saved_bytes: float  # eager attention (Korthikanti et al. 2022: 34sbh + 5as^2b for GPT)
    saved_bytes_flash: float  # with flash attention: the s^2 terms replaced by O(s) statistics
    saved_bytes_selective: float  # attention core recomputed (Korthikanti's selective: 34sbh)
    input_bytes: float  # the block input kept under full recompute (2sbh in bf16)
    by_kind: dict[OpKind, KindTotals] = field(default_factory=dict)
    moe: MoEStats | None = None


@dataclass(slots=True, kw_only=True)
class ModelGraph:
    """The operator DAG (nodes hold one OpNode under "op") and its Layers."""

    dag: nx.DiGraph
    layers: list[Layer]
    seq_len: int
    sample_batch: int
    dtype_bytes: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    name: str = "model"
    warnings: list[str] = field(default_factory=list)  # ops estimated from shapes, one line each

    @property
    def blocks(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == LayerKind.BLOCK]

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def num_active_params(self) -> int:
        return sum(layer.num_active_params for layer in self.layers)

    @property
    def fwd_flops(self) -> float:
        return sum(layer.fwd_flops for layer in self.layers)

    @property
    def bwd_flops(self) -> float:
        return sum(layer.bwd_flops for layer in self.layers)
