"""Host (CPU) time of a layer: a framework's measured per-op cost, per-expert launches of a
multi-stream grouped GEMM, and blocking traffic running inside the host's slack."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.cost import estimate
from planner.cost.compute import (
    OpCounts,
    PassTimes,
    Split,
    _with_host,
    host_times,
    op_times,
    split_for,
)
from planner.cost.kernels import gemm_s
from planner.cost.ops import OpCost, Region
from planner.graph import OpKind, extract_graph
from planner.hardware import HostOverhead, datasheet_profile
from planner.plan import Plan, Recompute
from planner.scenario import PRESETS, JobSpec, Precision, cluster_preset
from planner.scenario.runtime import framework

LAUNCH = HostOverhead(fwd_us_per_op=5.0, bwd_us_per_op=10.0, overlapped=True)
# one Qwen3-30B-A3B MoE layer as traced: 55 ops outside the experts, 641 inside (128 experts)
COUNTS = OpCounts(ops=55, expert_ops=641)


def _split(**kw) -> Split:
    base = {"batch_scale": 1.0, "tokens": 4096.0, "tp": 1, "cp": 1, "attention_calls": 1, "ep": 8, "sp": False,
            "imbalance": 1.0,
            "precision": Precision.BF16, "recompute": Recompute.NONE, "flash": True, "score_elements": 0.0,
            "experts_local": 16, "grouped_gemm": True}
    return Split(**(base | kw))


def test_single_kernel_grouped_gemm_launches_expert_ops_once_per_rank() -> None:
    # 641 expert ops / (16 local x 8 ranks) = 5.008 launches; (55 + 5.008) x 5 us = 300.04 us
    # forward, x 10 us = 600.08 us backward
    t = host_times(COUNTS, split=_split(), host=LAUNCH)
    assert t.fwd_s == pytest.approx((55 + 641 / 128) * 5e-6)
    assert t.fwd_s == pytest.approx(300.04e-6, rel=1e-4)
    assert t.bwd_input_s == pytest.approx(2 * t.fwd_s)


def test_multi_stream_grouped_gemm_launches_each_local_expert() -> None:
    # TE GroupedLinear: 641 / 8 ranks = 80.1 launches; (55 + 80.1) x 5 us = 675.6 us
    t = host_times(COUNTS, split=_split(gemm_streams=4), host=LAUNCH)
    assert t.fwd_s == pytest.approx((55 + 641 / 8) * 5e-6)


def test_measured_framework_host_cost_replaces_the_launch_model() -> None:
    # 55 x 80 us + (641 / 8) x 27 us = 4400 + 2163.4 = 6563.4 us, the same again in the backward
    # (the nsys forward ranges of the Megatron-Core layer sum to 6.57 ms)
    t = host_times(COUNTS, split=_split(gemm_streams=4, host_us_per_op=80.0, host_us_per_expert_op=27.0),
                   host=LAUNCH)
    assert t.fwd_s == pytest.approx(6563.375e-6)
    assert t.bwd_input_s == pytest.approx(t.fwd_s)


def test_cuda_graphs_launch_nothing_from_the_host() -> None:
    t = host_times(COUNTS, split=_split(cuda_graphs=True, host_us_per_op=80.0), host=LAUNCH)
    assert t.fwd_s == 0.0 and t.bwd_input_s == 0.0


def test_host_bound_pass_records_its_slack_and_hides_blocking_traffic_in_it() -> None:
    # kernels 1 ms fwd / 2 ms bwd, host 3 ms each way: the forward takes 3 ms (slack 2 ms), the
    # backward 3 ms (slack 1 ms); a 0.5 ms all-to-all hides in the forward's slack, 1.5 ms in the
    # backward shows 0.5 ms
    kernels = PassTimes(fwd_s=1e-3, bwd_input_s=1.5e-3, bwd_weight_s=0.5e-3)
    t = _with_host(kernels, PassTimes(fwd_s=3e-3, bwd_input_s=3e-3), LAUNCH)
    assert t.fwd_s == pytest.approx(3e-3) and t.host_excess_fwd_s == pytest.approx(2e-3)
    assert t.bwd_input_s + t.bwd_weight_s == pytest.approx(3e-3) and t.host_excess_bwd_s == pytest.approx(1e-3)
    assert t.past_host_fwd_s(0.5e-3) == 0.0
    assert t.past_host_bwd_s(1.5e-3) == pytest.approx(0.5e-3)
    # kernel-bound: no slack, all traffic shows
    k = _with_host(kernels, PassTimes(fwd_s=0.1e-3, bwd_input_s=0.1e-3), LAUNCH)
    assert k.host_excess_fwd_s == 0.0 and k.past_host_fwd_s(0.5e-3) == pytest.approx(0.5e-3)


def test_multi_stream_grouped_gemm_runs_experts_in_rounds_of_concurrent_kernels() -> None:
    # one expert's GEMM of m=256 tokens, (n, k) = (768, 2048), 16 local experts (ep=1: the traced
    # call is the whole call). One grouped kernel: 1/16 of a 16-expert grid per expert. Four
    # streams (TE GroupedLinear): 4 rounds of a 4-expert grid, i.e. 1/4 of one round per expert.
    hw = datasheet_profile(cluster_preset("dgx-h100", num_nodes=1))
    flops = 2.0 * 256 * 768 * 2048
    op = OpCost(kind=OpKind.EXPERT_MATMUL, region=Region.EXPERT, fwd_flops=flops, bwd_flops=2 * flops,
                bwd_weight_flops=flops, bytes_moved=0.0, saved_bytes=0.0, saved_region=Region.EXPERT,
                dims=(256, 768, 2048))
    split = _split(ep=1, experts_local=16)
    one_kernel = op_times(op, split=split, hw=hw).fwd_s
    streams = op_times(op, split=replace(split, gemm_streams=4), hw=hw).fwd_s
    kw = {"rates": hw.gemm, "peak_flops": hw.peak_flops(Precision.BF16),
          "bandwidth_bps": hw.memory_bandwidth_gbs * 1e9, "elem_bytes": 2.0}
    assert one_kernel == pytest.approx(gemm_s(256, 768, 2048, groups=16, **kw) / 16)
    assert streams == pytest.approx(gemm_s(256, 768, 2048, groups=4, **kw) / 4)
    assert streams > one_kernel  # fewer tiles share a wave and every round pays the fixed cost


def test_megatron_bridge_runtime_carries_its_measured_host_facts() -> None:
    runtime = framework("megatron-bridge-25.11")
    assert runtime.host_us_per_op == 80.0 and runtime.host_us_per_expert_op == 27.0
    assert runtime.grouped_gemm_streams == 4
    assert framework("generic").host_us_per_op is None and framework("generic").grouped_gemm_streams == 0
    graph = extract_graph(PRESETS["tiny-moe"], seq_len=256)
    plan = Plan(dims={"dp": 4, "ep": 4})
    job = JobSpec(seq_len=256, global_batch=8, framework="megatron-bridge-25.11", grouped_gemm=True)
    split = split_for(plan, graph=graph, precision=Precision.BF16, job=job)
    assert (split.host_us_per_op, split.host_us_per_expert_op, split.gemm_streams) == (80.0, 27.0, 4)
    # without a grouped GEMM the stack launches one GEMM per expert anyway: no streams
    assert split_for(plan, graph=graph, precision=Precision.BF16,
                     job=job.model_copy(update={"grouped_gemm": False})).gemm_streams == 0


def test_small_moe_under_a_python_heavy_stack_is_host_bound() -> None:
    """A tiny MoE's kernels take microseconds; under the measured Megatron host cost every layer
    takes its host time (about 2 x ops x 80 us per micro-batch), far more than under the 5 us
    launch model."""
    cluster = cluster_preset("dgx-h100", num_nodes=1)
    graph = extract_graph(PRESETS["tiny-moe"], seq_len=256)
    plan = Plan(dims={"dp": 4, "ep": 4, "tp": 2})
    hw = datasheet_profile(cluster)
    generic = JobSpec(seq_len=256, global_batch=8, grouped_gemm=True)
    megatron = generic.model_copy(update={"framework": "megatron-bridge-25.11"})
    fast = estimate(graph, plan, hw=hw, cluster=cluster, job=generic)
    slow = estimate(graph, plan, hw=hw, cluster=cluster, job=megatron)
    assert slow.step_time_s > 5 * fast.step_time_s
