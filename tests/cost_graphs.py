"""ModelGraphs for cost-model tests, built from the contract types in planner/graph.py.

Used where tracing would only slow the test down or is not yet available: the operator list
follows transformer.py's module names (layers.i.attention.wq, ...) and Korthikanti et al.
2022's saved-activation accounting (34sbh + 5as^2b per GPT layer in 16-bit).
"""

from __future__ import annotations

import networkx as nx

from planner.graph import KindTotals, Layer, LayerKind, ModelGraph, MoEStats, OpKind, OpNode
from planner.scenario import ModelSpec

B16 = 2


def _op(name: str, kind: OpKind, module: str, *, fwd: float = 0.0, bytes_moved: float = 0.0, saved: float = 0.0,
        params: float = 0.0, bwd: float | None = None) -> OpNode:
    return OpNode(name=name, kind=kind, target="synthetic", module=module, input_shapes=(), output_shapes=(),
                  dtype="bfloat16", fwd_flops=fwd, bwd_flops=2 * fwd if bwd is None else bwd,
                  bytes_read=bytes_moved * 2 / 3, bytes_written=bytes_moved / 3, param_bytes=params * B16,
                  saved_bytes=saved)


def _attention_ops(spec: ModelSpec, i: int, t: int, s: int) -> list[OpNode]:
    h, a, kv, hd = spec.hidden_size, spec.num_attention_heads, spec.kv_heads, spec.attn_head_dim
    q, k = a * hd, kv * hd
    p = f"layers.{i}.attention"
    ops = [
        _op("ln1", OpKind.NORM, f"layers.{i}.attention_norm", bytes_moved=2 * t * h * B16, saved=t * h * B16, params=h),
        _op("wq", OpKind.MATMUL, f"{p}.wq", fwd=2 * t * h * q, saved=t * h * B16, params=h * q),
        _op("wk", OpKind.MATMUL, f"{p}.wk", fwd=2 * t * h * k, params=h * k),
        _op("wv", OpKind.MATMUL, f"{p}.wv", fwd=2 * t * h * k, params=h * k),
        # eager core: Q, K, V kept, softmax out (2as^2b), dropout mask (as^2b), dropout out (2as^2b)
        _op("core", OpKind.ATTENTION, f"{p}.core", fwd=4 * t * s * q, bytes_moved=3 * t * q * B16,
            saved=t * (q + 2 * k) * B16 + 5 * a * s * t),
        _op("wo", OpKind.MATMUL, f"{p}.wo", fwd=2 * t * q * h, saved=t * q * B16, params=q * h),
        _op("drop1", OpKind.ELEMENTWISE, f"layers.{i}", bytes_moved=3 * t * h * B16, saved=t * h),
    ]
    if spec.position_embedding == "rope":
        ops.append(_op("rope", OpKind.ELEMENTWISE, f"{p}.rope", bytes_moved=2 * t * (q + k) * B16))
    return ops


def _mlp_ops(spec: ModelSpec, i: int, t: int) -> list[OpNode]:
    h, f = spec.hidden_size, spec.intermediate_size
    p = f"layers.{i}.feed_forward"
    gated = spec.hidden_act == "silu"
    ops = [
        _op("ln2", OpKind.NORM, f"layers.{i}.ffn_norm", bytes_moved=2 * t * h * B16, saved=t * h * B16, params=h),
        _op("w1", OpKind.MATMUL, f"{p}.w1", fwd=2 * t * h * f, saved=t * h * B16, params=h * f),
        _op("act", OpKind.ELEMENTWISE, f"{p}.act", bytes_moved=(3 if gated else 2) * t * f * B16,
            saved=(2 if gated else 1) * t * f * B16),
        _op("w2", OpKind.MATMUL, f"{p}.w2", fwd=2 * t * f * h, saved=t * f * B16, params=f * h),
        _op("drop2", OpKind.ELEMENTWISE, f"layers.{i}", bytes_moved=3 * t * h * B16, saved=t * h),
    ]
    if gated:
        ops.append(_op("w3", OpKind.MATMUL, f"{p}.w3", fwd=2 * t * h * f, params=h * f))
    return ops


def _moe_ops(spec: ModelSpec, i: int, t: int) -> list[OpNode]:
    h, f, e, k = spec.hidden_size, spec.expert_intermediate_size, spec.num_local_experts, spec.num_experts_per_tok
    p = f"layers.{i}.moe"
    routed = t * k
    ops = [
        _op("ln2", OpKind.NORM, f"layers.{i}.ffn_norm", bytes_moved=2 * t * h * B16, saved=t * h * B16, params=h),
        _op("router", OpKind.ROUTER, f"{p}.router", fwd=2 * t * h * e, saved=t * h * B16, params=h * e),
        _op("permute", OpKind.ELEMENTWISE, f"{p}.dispatch", bytes_moved=2 * routed * h * B16, saved=routed * h * B16),
        _op("ew1", OpKind.EXPERT_MATMUL, f"{p}.experts", fwd=2 * routed * h * f, params=e * h * f),
        _op("ew3", OpKind.EXPERT_MATMUL, f"{p}.experts", fwd=2 * routed * h * f, params=e * h * f),
        _op("eact", OpKind.ELEMENTWISE, f"{p}.experts", bytes_moved=3 * routed * f * B16, saved=2 * routed * f * B16),
        _op("ew2", OpKind.EXPERT_MATMUL, f"{p}.experts", fwd=2 * routed * f * h, saved=routed * f * B16,
            params=e * f * h),
    ]
    if spec.n_shared_experts:
        fs = spec.intermediate_size * spec.n_shared_experts
        ops += [_op("sw1", OpKind.MATMUL, f"{p}.shared_experts.w1", fwd=4 * t * h * fs, params=2 * h * fs),
                _op("sw2", OpKind.MATMUL, f"{p}.shared_experts.w2", fwd=2 * t * fs * h, saved=3 * t * fs * B16,
                    params=fs * h)]
    return ops


def _layer(index: int, name: str, kind: LayerKind, block_kind: str, ops: list[OpNode], *, t: int, h: int,
           moe: MoEStats | None = None, eager_extra: float = 0.0) -> Layer:
    by_kind: dict[OpKind, KindTotals] = {}
    for op in ops:
        prev = by_kind.get(op.kind, KindTotals())
        by_kind[op.kind] = KindTotals(fwd_flops=prev.fwd_flops + op.fwd_flops, bwd_flops=prev.bwd_flops + op.bwd_flops,
                                      bytes_moved=prev.bytes_moved + op.bytes_read + op.bytes_written,
                                      saved_bytes=prev.saved_bytes + op.saved_bytes)
    params = sum(op.param_bytes for op in ops) / B16
    active = params
    if moe is not None:
        active = params - moe.num_experts * moe.expert_params + moe.top_k * moe.expert_params
    saved = sum(op.saved_bytes for op in ops)
    weight_bwd = sum(op.fwd_flops for op in ops if op.param_bytes and op.kind != OpKind.NORM)
    return Layer(index=index, name=name, kind=kind, block_kind=block_kind, num_params=int(params),
                 num_active_params=int(active), param_bytes=int(params * B16),
                 fwd_flops=sum(op.fwd_flops for op in ops), bwd_flops=sum(op.bwd_flops for op in ops),
                 bwd_weight_flops=weight_bwd, saved_bytes=saved, saved_bytes_flash=saved - eager_extra,
                 saved_bytes_selective=saved - eager_extra, input_bytes=t * h * B16, by_kind=by_kind, moe=moe)


def build_graph(spec: ModelSpec, *, seq_len: int, batch: int = 1) -> ModelGraph:
    """An analytical ModelGraph of `spec` for `batch` sequences of `seq_len` tokens."""
    t, s, h, v = batch * seq_len, seq_len, spec.hidden_size, spec.vocab_size
    dag = nx.DiGraph()
    layers = []
    emb = [_op("tok", OpKind.EMBEDDING, "tok_embeddings", bytes_moved=2 * t * h * B16, params=v * h)]
    layers.append(_layer(0, "embedding", LayerKind.EMBEDDING, "embedding", emb, t=t, h=h))
    all_ops = list(emb)
    for i in range(spec.num_hidden_layers):
        moe_layer = spec.is_moe_layer(i)
        ops = _attention_ops(spec, i, t, s) + (_moe_ops(spec, i, t) if moe_layer else _mlp_ops(spec, i, t))
        stats = None
        if moe_layer:
            f = spec.expert_intermediate_size
            n_mats = 3 if spec.hidden_act == "silu" else 2
            stats = MoEStats(num_experts=spec.num_local_experts, top_k=spec.num_experts_per_tok,
                             expert_params=n_mats * h * f, shared_params=3 * h * spec.intermediate_size * spec.n_shared_experts,
                             expert_fwd_flops_per_token=2 * n_mats * h * f,
                             dispatch_bytes_per_token=spec.num_experts_per_tok * h * B16,
                             capacity_factor=spec.capacity_factor)
        eager = 5 * spec.num_attention_heads * s * t
        layers.append(_layer(i + 1, f"layers.{i}", LayerKind.BLOCK, "moe" if moe_layer else "dense", ops, t=t, h=h,
                             moe=stats, eager_extra=eager))
        all_ops += ops
    out_params = 0 if spec.tie_word_embeddings else v * h
    head = [_op("norm", OpKind.NORM, "norm", bytes_moved=2 * t * h * B16, saved=t * h * B16, params=h),
            _op("output", OpKind.MATMUL, "output", fwd=2 * t * h * v, saved=t * h * B16, params=out_params),
            _op("loss", OpKind.LOSS, "loss", bytes_moved=3 * t * v * 4, saved=t * v * 4)]
    layers.append(_layer(spec.num_hidden_layers + 1, "head", LayerKind.HEAD, "head", head, t=t, h=h))
    all_ops += head
    for n, op in enumerate(all_ops):
        dag.add_node(n, op=op)
        if n:
            dag.add_edge(n - 1, n)
    return ModelGraph(dag=dag, layers=layers, seq_len=seq_len, sample_batch=batch, dtype_bytes=B16, hidden_size=h,
                      num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.kv_heads,
                      vocab_size=v, name=spec.name)
