"""The cost model's per-graph reduction (ops.py) and memo: the fast paths must agree with the
layer-by-layer and operator-by-operator definitions they replace."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from planner.scenario import cluster_preset
from planner.cost import estimate, memory_lower_bound_bytes
from planner.cost.compute import layer_times, split_for
from planner.cost.ops import GraphKey, graph_summary, layer_ops
from planner.cost.schedule import chunk_layers
from planner.graph import OpKind, extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import PRESETS
from planner.plan import Plan
from planner.scenario import JobSpec

SEQ = 256
CLUSTER = cluster_preset("dgx-h100", num_nodes=1)  # 8 GPUs
HW = datasheet_profile(CLUSTER)
JOB = JobSpec(seq_len=SEQ, global_batch=16)


@pytest.fixture(scope="module")
def mixed():
    """One dense block, then MoE blocks with shared experts (DeepSeek's first_k_dense_replace)."""
    spec = PRESETS["tiny-mla"].model_copy(update={"num_hidden_layers": 6, "first_k_dense_replace": 2})
    return extract_graph(spec, seq_len=SEQ)


PLANS = [
    Plan(dims={"dp": 8}),
    Plan(dims={"pp": 2, "dp": 4}),
    Plan(dims={"pp": 2, "dp": 4}, schedule="interleaved-1f1b", virtual_stages=3),
    Plan(dims={"pp": 4, "dp": 2}, blocks_per_stage=[0, 3, 1, 2]),
    Plan(dims={"pp": 2, "tp": 2, "dp": 2}, blocks_per_stage=[6, 0], sequence_parallel=True),
]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_chunk_counts_equal_a_counter_over_the_chunk_layers(mixed, plan) -> None:
    summary = graph_summary(GraphKey(mixed))
    fast = summary.chunk_counts(plan.stage_blocks(summary.num_blocks))
    slow = [Counter(layer.block_kind for layer in chunk) for chunk in chunk_layers(mixed, plan)]
    assert fast == slow
    assert [list(c) for c in fast] == [list(c) for c in slow]  # same key order: same float sums


def test_identical_operators_are_priced_once_times_their_count(mixed) -> None:
    ops = layer_ops(GraphKey(mixed))["moe"]
    expert = [op for op in ops if op.kind == OpKind.EXPERT_MATMUL]
    assert expert and all(op.count > 1 for op in expert)  # one GEMM per routed expert, merged
    split = split_for(Plan(dims={"dp": 8}), graph=mixed, precision=JOB.precision)
    grouped = layer_times(ops, split=split, hw=HW, recomputed=False)
    expanded = tuple(replace(op, count=1) for op in ops for _ in range(op.count))
    one_by_one = layer_times(expanded, split=split, hw=HW, recomputed=False)
    for a, b in zip(grouped._tuple(), one_by_one._tuple(), strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_memo_keeps_estimate_pure(mixed) -> None:
    a, b = Plan(dims={"pp": 2, "dp": 4}), Plan(dims={"pp": 2, "tp": 2, "dp": 2}, micro_batch_size=2)
    first = estimate(mixed, a, hw=HW, cluster=CLUSTER, job=JOB).to_dict()
    estimate(mixed, b, hw=HW, cluster=CLUSTER, job=JOB)
    assert estimate(mixed, a, hw=HW, cluster=CLUSTER, job=JOB).to_dict() == first
    graph_summary(GraphKey(mixed)).memo.clear()
    assert estimate(mixed, a, hw=HW, cluster=CLUSTER, job=JOB).to_dict() == first
    other_hw = datasheet_profile(cluster_preset("dgx-a100", num_nodes=1))
    warm = estimate(mixed, a, hw=other_hw, cluster=CLUSTER, job=JOB).to_dict()  # memo holds HW's timings
    graph_summary(GraphKey(mixed)).memo.clear()
    assert estimate(mixed, a, hw=other_hw, cluster=CLUSTER, job=JOB).to_dict() == warm != first  # keyed by profile


def test_summary_totals_match_the_graph(mixed) -> None:
    summary = graph_summary(GraphKey(mixed))
    assert summary.fwd_flops == mixed.fwd_flops and summary.bwd_flops == mixed.bwd_flops
    assert summary.full_recompute_flops == sum(layer.fwd_flops for layer in mixed.blocks)
    assert summary.num_blocks == len(mixed.blocks) == 6
    assert summary.moe is not None and summary.moe.num_experts == PRESETS["tiny-mla"].num_local_experts


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_lower_bound_is_the_largest_stage_model_states(mixed, plan) -> None:
    e = estimate(mixed, plan, hw=HW, cluster=CLUSTER, job=JOB)
    states = max(t["weights"] + t["gradients"] + t["optimizer"] for t in e.stage_memory)
    assert memory_lower_bound_bytes(mixed, plan, JOB, CLUSTER) == pytest.approx(states, rel=1e-12)


@pytest.mark.parametrize(("ffn", "hidden"), [(32, 64), (128, 64)])
def test_expert_down_projection_is_the_gemm_writing_the_hidden_size(ffn: int, hidden: int) -> None:
    """Fine-grained experts (ffn narrower than the hidden size, Qwen3 / DeepSeek-V3) and wide ones
    (Mixtral): the down projection (ffn -> hidden) is row-parallel, gate and up are not, and an FP8
    stack that keeps 1-byte GEMM inputs saves expert activation memory."""
    from planner.cost.memory import activation_bytes, layer_activation
    from planner.plan import Recompute
    from planner.scenario import Precision

    spec = PRESETS["tiny-moe"].model_copy(update={"hidden_size": hidden, "moe_intermediate_size": ffn,
                                                  "intermediate_size": ffn})
    graph = extract_graph(spec, seq_len=SEQ)
    moe = next(layer for layer in graph.layers if layer.moe is not None)
    experts = [op for op in layer_ops(GraphKey(graph))[moe.block_kind] if op.kind == OpKind.EXPERT_MATMUL]
    assert {(op.dims[1], op.dims[2]) for op in experts if op.row_parallel} == {(hidden, ffn)}
    assert all(op.dims[2] == hidden for op in experts if not op.row_parallel)
    act = layer_activation(graph, moe)
    split = split_for(Plan(dims={"dp": 8}), graph=graph, precision=Precision.FP8)
    kept = activation_bytes(act, split=split, flash=True, recompute=Recompute.NONE)
    fp8 = activation_bytes(act, split=replace(split, fp8_saved_inputs=True), flash=True, recompute=Recompute.NONE)
    tokens = SEQ * graph.sample_batch * split.batch_scale
    top_k = moe.moe.top_k
    # at least the dispatched tokens (top_k x hidden) and the expert activation (top_k x ffn), 1 byte each
    assert kept - fp8 >= tokens * top_k * (hidden + ffn) * 0.999
