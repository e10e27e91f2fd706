"""extract_graph for the canonical Transformer: embedding, one block per kind, head, replicated.

Each piece is traced on its own with meta inputs shaped like the real ones (token ids, or hidden
states that require grad, as a block's input does in training); block i of a kind is a relabelled
copy of the traced one, chained into one DAG (entry ops of each piece consume the previous exit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from planner.graph import build as gb
from planner.graph.types import BlockKind, Layer, LayerKind, ModelGraph, OpNode
from planner.graph.collector import collector_paused
from planner.graph.lean import SkipMetaInit, no_dynamo_import
from planner.graph.trace import storage_key, trace_fn
from planner.scenario import ModelSpec, graph_size_problem
from planner.graph.transformer import Transformer, loss_fn


@dataclass(frozen=True, slots=True)
class Piece:
    layer: Layer
    nodes: list[OpNode]
    edges: list[tuple[int, int]]
    entries: list[int]  # positions of ops reading the piece's input
    exit: int | None  # position of the op producing the piece's output
    warnings: list[str]


def extract_graph(spec: ModelSpec, *, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> ModelGraph:
    """The canonical Transformer's graph, tracing one block per distinct block kind (APEX-style).

    Blocks of one kind are structurally identical, so their ops, FLOPs and saved bytes are too;
    tests/graph checks the replicated graph against a whole-model trace. Numbers are for
    `batch` sequences of `seq_len` tokens in `dtype`.
    """
    if seq_len < 1 or batch < 1:
        raise ValueError(f"seq_len={seq_len}, batch={batch}: both must be >= 1")
    if problem := graph_size_problem(spec):  # before tracing: the graph is O(layers x experts)
        raise ValueError(problem)
    with collector_paused():  # collector.py: the trace frees nothing a collection would find
        with no_dynamo_import():
            with torch.device("meta"), SkipMetaInit():
                model = Transformer(spec, layers=_first_of_each_kind(spec)).to(dtype)
            ctx = _Context(model, seq_len=seq_len, batch=batch, dtype=dtype)
            pieces = [ctx.embedding(), *ctx.blocks(), ctx.head()]
        return gb.assemble([(p.layer, p.nodes, p.edges, p.entries, p.exit) for p in pieces], graph_fields=dict(
            seq_len=seq_len, sample_batch=batch, dtype_bytes=ctx.width, hidden_size=spec.hidden_size,
            num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab_size,
            name=spec.name, warnings=list(dict.fromkeys(w for p in pieces for w in p.warnings))))


def _first_of_each_kind(spec: ModelSpec) -> tuple[int, ...]:
    """The blocks the meta model is built with and `_Context.blocks` traces, the first of each kind
    (dense, MoE) (building all of a 100-layer model's modules costs more than tracing it)."""
    return tuple(sorted({spec.is_moe_layer(i): i for i in reversed(range(spec.num_hidden_layers))}.values()))


class _Context:
    """The meta model and sample tensors shared by the pieces."""

    def __init__(self, model: Transformer, *, seq_len: int, batch: int, dtype: torch.dtype) -> None:
        self.model, self.spec = model, model.spec
        self.freqs = model.rope(seq_len)
        self.tokens = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
        self.hidden = torch.empty(batch, seq_len, self.spec.hidden_size, dtype=dtype, device="meta", requires_grad=True)
        self.width = gb.dtype_bytes(model)
        self.hidden_bytes = float(self.hidden.numel() * self.width)

    def piece(self, fn: Callable[[], torch.Tensor], meta: gb.LayerMeta, *, moe_paths: frozenset[str] = frozenset(),
              entry: torch.Tensor | None = None) -> Piece:
        trace = trace_fn(self.model, fn)
        recs = list(range(len(trace.records)))
        layer, nodes = gb.summarize(trace, recs, trace.saved, meta, moe_paths=moe_paths)
        entries = sorted(set(trace.consumers.get(storage_key(entry), ()))) if entry is not None else []
        exit_pos = trace.producer.get(trace.output_keys[0]) if trace.output_keys else None
        return Piece(layer, nodes, gb.local_edges(trace, recs), entries, exit_pos, trace.warnings)

    def _meta(self, index: int, name: str, kind: LayerKind, block_kind: BlockKind, total: int, input_bytes: float,
              moe=None) -> gb.LayerMeta:
        return gb.LayerMeta(index=index, name=name, kind=kind, block_kind=block_kind, num_params=total,
                            num_active_params=gb.active_params(total, moe), param_bytes=total * self.width,
                            input_bytes=input_bytes, moe=moe)

    def embedding(self) -> Piece:
        total = gb.param_count([self.model.tok_embeddings, self.model.pos_embeddings])
        meta = self._meta(0, "embedding", LayerKind.EMBEDDING, BlockKind.EMBEDDING, total, float(self.tokens.numel() * 8))
        return self.piece(lambda: self.model.embed(self.tokens), meta)

    def blocks(self) -> list[Piece]:
        """One traced block per kind (dense / moe): the blocks the meta model has, the first of each
        kind (_first_of_each_kind), relabelled for every position."""
        built = (int(key) for key in self.model.layers)
        templates = {self.spec.is_moe_layer(i): self._block(i, self.spec.is_moe_layer(i)) for i in built}
        out = []
        for i in range(self.spec.num_hidden_layers):
            t = templates[self.spec.is_moe_layer(i)]
            layer, nodes = gb.relabel(t.layer, t.nodes, index=i + 1, name=f"layers.{i}")
            out.append(Piece(layer, nodes, t.edges, t.entries, t.exit, t.warnings))
        return out

    def _block(self, i: int, is_moe: bool) -> Piece:
        block = self.model.layers[str(i)]
        moe = gb.moe_stats(block.moe, top_k=self.spec.num_experts_per_tok, num_experts=self.spec.num_local_experts,
                           hidden_size=self.spec.hidden_size, dtype_bytes=self.width,
                           capacity_factor=self.spec.capacity_factor) if is_moe else None
        meta = self._meta(i + 1, f"layers.{i}", LayerKind.BLOCK, BlockKind.MOE if is_moe else BlockKind.DENSE,
                          gb.param_count([block]), self.hidden_bytes, moe)
        paths = frozenset([f"layers.{i}.moe"] if is_moe else [])
        return self.piece(lambda: block(self.hidden, self.freqs), meta, moe_paths=paths, entry=self.hidden)

    def head(self) -> Piece:
        total = gb.param_count([self.model.norm, self.model.output])
        meta = self._meta(self.spec.num_hidden_layers + 1, "head", LayerKind.HEAD, BlockKind.HEAD, total, self.hidden_bytes)
        labels = torch.zeros_like(self.tokens)
        return self.piece(lambda: loss_fn(self.model.head(self.hidden), labels), meta, entry=self.hidden)
