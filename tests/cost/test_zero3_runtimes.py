"""ZeRO-3 runtimes: FSDP's prefetched per-layer collectives vs DeepSpeed 2021's blocking per-sub-module ones."""

import pytest

from planner.cost.comm import deepspeed_2021_collective_s, interference_s, param_modules, zero3_layer_comm
from planner.cost.ops import GraphKey
from planner.graph import BlockKind, extract_graph
from planner.hardware import Collective, datasheet_profile, group_span
from planner.plan import Plan
from planner.scenario import PRESETS, JobSpec, Precision, ShardingRuntime, cluster_preset

# dgx-a100 datasheet profile: NVLink fit 300 x 0.80 = 240 GB/s, HDR NIC fit 25 x 0.85 = 21.25 GB/s,
# 8 us per inter-node ring step, 5 us per host launch. 384 GPUs in one group: k = 8 members per
# node, bus bandwidth min(240, 8 x 21.25) = 170 GB/s.
CLUSTER = cluster_preset("dgx-a100", num_nodes=48)
HW = datasheet_profile(CLUSTER)
SPAN = group_span(CLUSTER, num_ranks=384, stride=1)
LAYER_PARAMS = 12 * 12288**2  # one GPT-3 175B block, 1.812e9 parameters (Narayanan et al. 2021)
PLAN = Plan(dims={"dp": 384}, zero_stage=3)


def _job(runtime: ShardingRuntime) -> JobSpec:
    return JobSpec(seq_len=2048, global_batch=1536, precision=Precision.FP16, zero3_runtime=runtime)


def test_deepspeed_2021_pays_each_sub_module_its_latency_and_rank_copies() -> None:
    size = LAYER_PARAMS * 2.0  # fp16 gather: 3.624e9 B
    # per module (8 of them, 4.530e8 B each): ring 383 x 8 us = 3.064 ms, bandwidth
    # (383/384 x 4.530e8) / 170e9 = 2.658 ms, 384 list copies x 5 us = 1.920 ms -> 7.642 ms; x 8 = 61.1 ms
    t = deepspeed_2021_collective_s(HW, Collective.ALL_GATHER, size, span=SPAN, modules=8)
    assert t == pytest.approx(61.14e-3, rel=2e-3)
    # one module: 3.064 + 21.264 + 1.920 ms = 26.25 ms
    assert deepspeed_2021_collective_s(HW, Collective.ALL_GATHER, size, span=SPAN, modules=1) == pytest.approx(
        26.25e-3, rel=2e-3)


def test_deepspeed_2021_blocks_while_fsdp_hides_behind_compute() -> None:
    window = 1.0  # a backward far longer than the traffic
    ds = zero3_layer_comm(LAYER_PARAMS, plan=PLAN, job=_job(ShardingRuntime.DEEPSPEED_2021), span=SPAN, hw=HW,
                          fwd_window_s=window, bwd_window_s=window, modules=8)
    assert ds.exposed_fwd_s == ds.fwd_s and ds.exposed_bwd_s == ds.bwd_s
    # fwd 61.1 ms (above); bwd = one more gather + the fp16 reduce-scatter priced alike = 2 x 61.1 ms
    assert ds.bwd_s == pytest.approx(2 * ds.fwd_s, rel=1e-9)
    fsdp = zero3_layer_comm(LAYER_PARAMS, plan=PLAN, job=_job(ShardingRuntime.FSDP), span=SPAN, hw=HW,
                            fwd_window_s=window, bwd_window_s=window, modules=8)
    # FSDP: one 24.33 ms gather (3.064 + 21.264 ms), hidden; only NCCL's SM share shows
    assert fsdp.fwd_s == pytest.approx(24.33e-3, rel=2e-3)
    assert fsdp.exposed_fwd_s < 0.2 * fsdp.fwd_s


def test_param_modules_counts_leaf_modules_holding_parameters() -> None:
    graph = extract_graph(PRESETS["llama3-8b"], seq_len=512)
    # attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3: the attention module's own op reads
    # only the RoPE buffer, so it is not a fetch unit
    assert param_modules(GraphKey(graph))[BlockKind.DENSE] == 9


def test_fsdp1_backward_shares_one_nccl_stream_like_fsdp() -> None:
    """FSDP1 under Composer's BACKWARD_POST issues gather(i-1) right after scatter(i+1) on the one NCCL
    stream, the order BACKWARD_PRE reaches too: the pair shares the layer's backward, priced as FSDP."""
    for window in (1.0, 0.03, 0.0):
        fsdp = zero3_layer_comm(LAYER_PARAMS, plan=PLAN, job=_job(ShardingRuntime.FSDP), span=SPAN, hw=HW,
                                fwd_window_s=window, bwd_window_s=window)
        fsdp1 = zero3_layer_comm(LAYER_PARAMS, plan=PLAN, job=_job(ShardingRuntime.FSDP1), span=SPAN, hw=HW,
                                 fwd_window_s=window, bwd_window_s=window)
        assert fsdp1 == fsdp
    # a backward shorter than gather + reduce-scatter leaves the difference (and NCCL's SM share) exposed
    short = zero3_layer_comm(LAYER_PARAMS, plan=PLAN, job=_job(ShardingRuntime.FSDP1), span=SPAN, hw=HW,
                             fwd_window_s=0.0, bwd_window_s=0.03)
    assert short.exposed_bwd_s == pytest.approx(short.bwd_s - 0.03 + interference_s(0.03, HW), rel=1e-9)


def test_fsdp1_keeps_fsdps_single_sharded_copy() -> None:
    assert ShardingRuntime.FSDP1.fsdp and ShardingRuntime.FSDP.fsdp
    assert not ShardingRuntime.DEEPSPEED_2021.fsdp
