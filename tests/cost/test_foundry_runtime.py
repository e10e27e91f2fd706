"""llm-foundry's MPT runtime facts priced by the cost model: the unpad/re-pad copies its flash_attn_fn
runs around every attention call (kernels.unpad_bytes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.cost.compute import op_times, split_for
from planner.cost.kernels import unpad_bytes
from planner.cost.ops import GraphKey, layer_ops
from planner.graph import BlockKind, OpKind, extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.scenario import JobSpec, cluster_preset, frameworks, model_preset


def test_unpad_bytes_count_each_copy_of_q_k_v_and_the_output() -> None:
    # MHA, 1e6 elements each of Q, K, V and the output: forward gathers 3e6 (4 B each) and scatters
    # the output into zeros (6 B); backward scatters dq, dk, dv into zeros (6 B each), gathers do (4 B)
    assert unpad_bytes(1e6) == pytest.approx((4 * 3e6 + 6e6, 6 * 3e6 + 4e6))
    # GQA with 1/4 the K,V heads moves less
    fwd, bwd = unpad_bytes(1e6, kv_ratio=0.25)
    assert fwd == pytest.approx(4 * 1.5e6 + 6e6) and bwd == pytest.approx(6 * 1.5e6 + 4e6)


def test_llm_foundry_attention_pays_the_packing_copies_on_top_of_the_kernel() -> None:
    assert frameworks()["llm-foundry"].attention_unpads and not frameworks()["megatron-core-0.8"].attention_unpads
    graph = extract_graph(model_preset("llama3-8b"), seq_len=2048)
    hw = datasheet_profile(cluster_preset("dgx-h100", num_nodes=1))
    plan = Plan(dims={"dp": 8}, micro_batch_size=2)
    job = JobSpec(seq_len=2048, global_batch=16, framework="llm-foundry")
    split = split_for(plan, graph=graph, precision="bf16", job=job)
    assert split.attention_unpads
    attention = next(op for op in layer_ops(GraphKey(graph))[BlockKind.DENSE] if op.kind == OpKind.ATTENTION)
    packed = op_times(attention, split=split, hw=hw)
    plain = op_times(attention, split=replace(split, attention_unpads=False), hw=hw)
    q = 2 * 2048 * 4096  # micro-batch tokens x query width
    fwd, bwd = unpad_bytes(q, kv_ratio=8 / 32)  # llama3-8b: 8 K,V heads of 32
    # Q's elements come from the traced attention FLOPs (4 x Q elements x the sequence, plus the softmax)
    assert packed.fwd_s - plain.fwd_s == pytest.approx(hw.memory_bound_s(fwd), rel=0.01)
    assert packed.bwd_input_s - plain.bwd_input_s == pytest.approx(hw.memory_bound_s(bwd), rel=0.01)


def test_fsdp1_gradient_passes_follow_the_reduce_dtype() -> None:
    from planner.cost.layers import fsdp1_grad_bytes
    plan = Plan(dims={"dp": 8}, zero_stage=3)
    # DEFAULT (fp32 reduce): cat of the views' bf16 grads (4) + cast to fp32 (2 + 4) + fp32 pre-divide (4 + 4)
    default = JobSpec(seq_len=2048, global_batch=16, framework="llm-foundry")
    assert fsdp1_grad_bytes(plan, job=default) == pytest.approx(18.0)
    # PURE (bf16 reduce): no cast, a bf16 pre-divide
    pure = default.model_copy(update={"optimizer": default.optimizer.model_copy(update={"grad_reduce_bytes": 2.0})})
    assert fsdp1_grad_bytes(plan, job=pure) == pytest.approx(8.0)


def test_fsdp1_runtime_lengthens_the_sharded_backward_only() -> None:
    """The flat-gradient passes join the backward of every unit under FSDP1's sharded stages, not DDP."""
    from planner.cost import estimate
    from planner.cost.layers import fsdp1_grad_bytes
    from planner.scenario import ShardingRuntime
    from planner.scenario.runtime import runtime_job_fields
    cluster = cluster_preset("dgx-h100", num_nodes=1)
    graph = extract_graph(model_preset("llama3-8b"), seq_len=2048)
    hw = datasheet_profile(cluster)
    job = JobSpec(**runtime_job_fields({"seq_len": 2048, "global_batch": 16, "framework": "llm-foundry"}))
    assert job.zero3_runtime == ShardingRuntime.FSDP1
    generic = job.model_copy(update={"zero3_runtime": ShardingRuntime.FSDP})
    for stage in (2, 3):
        plan = Plan(dims={"dp": 8}, micro_batch_size=2, zero_stage=stage)
        one, other = (estimate(graph, plan, hw=hw, cluster=cluster, job=j) for j in (job, generic))
        extra = one.time_breakdown_s["compute"] - other.time_breakdown_s["compute"]
        params = 8.03e9  # llama3-8b, every unit's parameters once per backward
        assert extra == pytest.approx(hw.memory_bound_s(params * fsdp1_grad_bytes(plan, job=job)), rel=0.02)
    ddp = Plan(dims={"dp": 8}, micro_batch_size=2, zero_stage=0)
    a, b = (estimate(graph, ddp, hw=hw, cluster=cluster, job=j) for j in (job, generic))
    assert a.time_breakdown_s["compute"] == pytest.approx(b.time_breakdown_s["compute"])
