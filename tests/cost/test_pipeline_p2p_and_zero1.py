"""Runtime facts the step time depends on: pipeline send/recv that block the stage (torch
pipelining, Megatron-LM before Megatron-Core's overlap_p2p_comm) and ZeroRedundancyOptimizer's
ZeRO-1 (DDP all-reduce, then parameter broadcasts inside step())."""

from __future__ import annotations

from planner.cost import TimeTerm, estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.scenario import JobSpec, OptimizerSharding, cluster_preset, frameworks, model_preset


def _estimate(plan: dict, **job):
    spec = model_preset("llama2-7b")
    cl = cluster_preset("dgx-h100", num_nodes=4)
    job = JobSpec(seq_len=4096, global_batch=64, **job)
    graph = extract_graph(spec, seq_len=job.seq_len)
    return estimate(graph, Plan.model_validate(plan), hw=datasheet_profile(cl), cluster=cl, job=job)


PIPELINE = {"dims": {"tp": 8, "pp": 4, "dp": 1}, "schedule": "interleaved-1f1b", "virtual_stages": 2, "zero_stage": 1}


def test_blocking_p2p_keeps_the_stage_busy_for_every_exchange():
    """Each chunk's forward (but the last) and backward (but the first) ends with a wait on its
    send: a stage pays 2 v transfers per micro-batch, less one F on the last stage and one B on
    the first, so the step grows by between 2 m (v - 1) and 2 m v transfers."""
    overlapped, blocking = _estimate(PIPELINE, pp_comm_overlap=True), _estimate(PIPELINE, pp_comm_overlap=False)
    m, v = 64, 2  # dp 1: the whole batch is this pipeline's micro-batches
    p2p_s = overlapped.time_breakdown_s[TimeTerm.PP] / (2 * m)
    assert p2p_s > 0
    grown = blocking.step_time_s - overlapped.step_time_s
    assert 2 * m * (v - 1) * p2p_s < grown <= 2 * m * v * p2p_s


def test_blocking_p2p_changes_nothing_without_a_pipeline():
    flat = {"dims": {"tp": 8, "dp": 4}, "zero_stage": 1}
    assert _estimate(flat, pp_comm_overlap=False).step_time_s == _estimate(flat, pp_comm_overlap=True).step_time_s


def test_zero_redundancy_all_reduces_and_broadcasts_in_step():
    """DDP's all-reduce moves twice a reduce-scatter's bytes and the broadcasts cannot hide behind
    the next forward, so the same ZeRO-1 plan syncs longer than Megatron's distributed optimizer."""
    plan = {"dims": {"tp": 8, "dp": 4}, "zero_stage": 1}
    megatron = _estimate(plan, zero1_runtime=OptimizerSharding.DISTRIBUTED_OPTIMIZER)
    torch_zero = _estimate(plan, zero1_runtime=OptimizerSharding.ZERO_REDUNDANCY)
    assert torch_zero.time_breakdown_s[TimeTerm.DP] > megatron.time_breakdown_s[TimeTerm.DP]
    assert torch_zero.step_time_s > megatron.step_time_s
    assert torch_zero.peak_memory_bytes == megatron.peak_memory_bytes  # same sharding of the states
    zero0 = {"dims": {"tp": 8, "dp": 4}, "zero_stage": 0}
    assert (_estimate(zero0, zero1_runtime=OptimizerSharding.ZERO_REDUNDANCY).step_time_s
            == _estimate(zero0).step_time_s)  # the fact is about ZeRO-1 only


def test_runtime_files_state_the_p2p_and_zero1_facts():
    table = frameworks()
    assert not table["generic"].pp_comm_overlap and table["generic"].zero1_runtime == OptimizerSharding.ZERO_REDUNDANCY
    for name in ("megatron-lm-2021", "megatron-lm-2022", "torchtitan-2024-12"):
        assert not table[name].pp_comm_overlap
    for name in ("megatron-core-0.8", "nemo-24.07", "megatron-bridge-25.11"):
        assert table[name].pp_comm_overlap and table[name].zero1_runtime == OptimizerSharding.DISTRIBUTED_OPTIMIZER
