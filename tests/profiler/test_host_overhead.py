"""The host (framework) term of the cost model: charged per traced op, per TP module, shared cores,
async overlap on GPUs; and the profiler's fit recovering it from pass timings. No executor, no timing."""

from __future__ import annotations

import pytest
import torch

from planner.scenario import cluster_preset
from planner.cost import estimate
from planner.cost.compute import block_kind_times, host_times, op_counts, split_for
from planner.cost.ops import GraphKey
from planner.graph import extract_graph
from planner.hardware import HostOverhead, datasheet_profile
from planner.scenario import PRESETS
from planner.plan import Plan
from planner.profiler import HostSamples, PassTiming, fit_host
from planner.scenario import JobSpec, Precision

CPU = datasheet_profile(cluster_preset("cpu-local"))  # a CPU datasheet profile has no host term


def _graph(name: str, seq_len: int = 256):
    return extract_graph(PRESETS[name], seq_len=seq_len, batch=1, dtype=torch.float32)


def _plan(**dims: int) -> Plan:
    return Plan.model_validate({"dims": dims})


def _with(host: HostOverhead):
    return CPU.model_copy(update={"host": host})


def test_op_counts_follow_the_eager_model() -> None:
    dense = op_counts(GraphKey(_graph("tiny-dense")))["dense"]
    moe = op_counts(GraphKey(_graph("tiny-moe")))["moe"]
    assert dense.expert_ops == 0 and moe.expert_ops > 0
    assert dense.tp_modules == 7  # wq, wk, wv, wo, w1, w3, w2
    assert moe.ops + moe.expert_ops > dense.ops  # router + per-expert ops on top of attention


def test_host_term_is_charged_per_op_and_scales_with_op_count() -> None:
    graph, plan = _graph("tiny-dense"), _plan(dp=4)
    split = split_for(plan, graph=graph, precision=Precision.FP32)
    base = block_kind_times(graph, split=split, hw=CPU)
    host = HostOverhead(fwd_us_per_op=50.0, bwd_us_per_op=80.0, overlapped=False)
    charged = block_kind_times(graph, split=split, hw=_with(host))
    doubled = block_kind_times(graph, split=split, hw=_with(host.model_copy(update={"fwd_us_per_op": 100.0})))
    counts = op_counts(GraphKey(graph))
    for kind, t in base.items():
        n = counts[kind].ops
        assert charged[kind].fwd_s - t.fwd_s == pytest.approx(n * 50e-6)
        assert charged[kind].bwd_input_s - t.bwd_input_s == pytest.approx(n * 80e-6)
        assert doubled[kind].fwd_s - t.fwd_s == pytest.approx(2 * n * 50e-6)
    moe_counts = op_counts(GraphKey(_graph("tiny-moe")))["moe"]
    moe_split = split_for(plan, graph=_graph("tiny-moe"), precision=Precision.FP32)
    ratio = host_times(moe_counts, split=moe_split, host=host).fwd_s / host_times(counts["dense"], split=split,
                                                                                   host=host).fwd_s
    assert ratio == pytest.approx((moe_counts.ops + moe_counts.expert_ops) / counts["dense"].ops)


def test_ep_tp_tokens_and_core_sharing_change_the_host_term() -> None:
    graph = _graph("tiny-moe")
    counts = op_counts(GraphKey(graph))["moe"]
    host = HostOverhead(fwd_us_per_op=10.0, bwd_us_per_op=10.0, fwd_us_per_op_per_ktoken=4.0,
                        tp_fwd_us_per_module=200.0, tp_bwd_us_per_module=300.0, overlapped=False)
    one = host_times(counts, split=split_for(_plan(dp=4), graph=graph, precision=Precision.FP32), host=host)
    ep = host_times(counts, split=split_for(_plan(dp=4, ep=4), graph=graph, precision=Precision.FP32), host=host)
    assert one.fwd_s - ep.fwd_s == pytest.approx(counts.expert_ops * 0.75 * (10 + 4 * 0.256) * 1e-6)
    tp = host_times(counts, split=split_for(_plan(dp=2, tp=2), graph=graph, precision=Precision.FP32), host=host)
    assert tp.bwd_input_s - one.bwd_input_s == pytest.approx(counts.tp_modules * 300e-6)
    dense, plan = _graph("tiny-dense"), _plan(dp=4)
    split = split_for(plan, graph=dense, precision=Precision.FP32)
    full = block_kind_times(dense, split=split, hw=_with(host))["dense"]
    shared = block_kind_times(dense, split=split, hw=_with(host.model_copy(update={"shared_cores": 1.0})))["dense"]
    assert shared.fwd_s == pytest.approx(full.fwd_s)  # layers stay at solo speed; sharing is per node


def test_gpu_launch_overhead_overlaps_big_kernels_but_bounds_tiny_ones() -> None:
    cluster = cluster_preset("dgx-h100")
    hw = datasheet_profile(cluster)
    assert hw.host is not None and hw.host.overlapped
    job = JobSpec(seq_len=4096, global_batch=64, precision=Precision.BF16)
    big, plan = _graph("llama3-8b", 4096), _plan(dp=8)
    with_host = estimate(big, plan, hw=hw, cluster=cluster, job=job)
    without = estimate(big, plan, hw=hw.model_copy(update={"host": None}), cluster=cluster, job=job)
    assert with_host.step_time_s == without.step_time_s  # launches hide behind 8B-model kernels
    tiny = _graph("tiny-dense", 64)
    split = split_for(plan, graph=tiny, precision=Precision.BF16)
    slow_host = hw.model_copy(update={"host": hw.host.model_copy(update={"fwd_us_per_op": 1e4})})
    t = block_kind_times(tiny, split=split, hw=slow_host)["dense"]
    assert t.fwd_s == pytest.approx(op_counts(GraphKey(tiny))["dense"].ops * 1e-2)  # max(kernels, host)


def test_fit_recovers_the_host_model_from_pass_timings() -> None:
    """Passes synthesised from a known HostOverhead with the kernel model give it back."""
    spec, truth = PRESETS["tiny-dense"], HostOverhead(fwd_us_per_op=12.0, bwd_us_per_op=20.0,
                                                      fwd_us_per_op_per_ktoken=30.0, bwd_us_per_op_per_ktoken=50.0,
                                                      overlapped=False)
    passes = []
    for seq in (16, 256):
        graph = _graph("tiny-dense", seq)
        split = split_for(_plan(dp=1), graph=graph, precision=Precision.FP32)
        per_kind = block_kind_times(graph, split=split, hw=_with(truth))
        fwd = sum(per_kind[layer.block_kind].fwd_s for layer in graph.layers)
        bwd = sum(per_kind[layer.block_kind].bwd_input_s + per_kind[layer.block_kind].bwd_weight_s
                  for layer in graph.layers)
        passes.append(PassTiming(seq_len=seq, fwd_s=fwd, bwd_s=bwd))
    solo = passes[1].fwd_s + passes[1].bwd_s
    samples = [HostSamples(passes=passes, together_s=[solo * 2.5, solo * 2, solo], dtensor_fwd_s=2e-4, dtensor_bwd_s=3e-4,
                           sync_wait_s=5e-4, collective_s=1e-3)] * 3
    fitted = fit_host(samples, spec=spec, precision=Precision.FP32, kernels=CPU)
    for field in ("fwd_us_per_op", "bwd_us_per_op", "fwd_us_per_op_per_ktoken", "bwd_us_per_op_per_ktoken"):
        assert getattr(fitted, field) == pytest.approx(getattr(truth, field), rel=1e-6)
    assert fitted.shared_cores == pytest.approx(3 * 0.5)  # 3 ranks, each at half its solo speed
    assert (fitted.tp_fwd_us_per_module, fitted.sync_wait_us) == (pytest.approx(200.0), pytest.approx(500.0))


def test_sync_wait_fit_inverts_the_model_on_the_tp_probe_plan() -> None:
    """A TP pass priced with a known wait per collective gives that wait back; TP plans, with a
    collective per sharded module, feel it far more than DP with one gradient all-reduce."""
    from planner.profiler.host_fit import _fit_sync_wait

    host = HostOverhead(fwd_us_per_op=10.0, bwd_us_per_op=10.0, overlapped=False, shared_cores=1.5)
    graph, job = _graph("tiny-dense"), JobSpec(seq_len=256, global_batch=2, precision=Precision.FP32)
    cluster = cluster_preset("cpu-local")
    slow = _with(host.model_copy(update={"sync_wait_us": 3000.0}))
    est = estimate(graph, _plan(tp=2, dp=2), hw=slow, cluster=cluster, job=job)
    measured = est.step_time_s - est.time_breakdown_s["dp"] - est.time_breakdown_s["optimizer"]
    fitted = _fit_sync_wait(measured, spec=PRESETS["tiny-dense"], precision=Precision.FP32, seq_len=256,
                            kernels=_with(host), ranks=4)
    assert fitted == pytest.approx(3000.0, rel=1e-6)
    step = {dims: [estimate(graph, _plan(**dict(dims)), hw=hw, cluster=cluster, job=job).step_time_s
                   for hw in (_with(host), slow)] for dims in ((("dp", 4),), (("tp", 2), ("dp", 2)))}
    dp_extra, tp_extra = (b - a for a, b in step.values())
    assert tp_extra > 5 * dp_extra > 0  # DP: gradient and loss all-reduces


def test_pipeline_action_time_is_charged_per_action_and_only_with_pipelining() -> None:
    graph, job = _graph("tiny-dense"), JobSpec(seq_len=256, global_batch=8, precision=Precision.FP32)
    cluster = cluster_preset("cpu-local")
    host = HostOverhead(fwd_us_per_op=10.0, bwd_us_per_op=10.0, overlapped=False)
    with_actions = host.model_copy(update={"pipe_action_us": 1000.0})
    for dims, charged in (({"pp": 4}, True), ({"dp": 2, "pp": 2}, True), ({"dp": 4}, False)):
        plan = _plan(**dims)
        base = estimate(graph, plan, hw=_with(host), cluster=cluster, job=job)
        more = estimate(graph, plan, hw=_with(with_actions), cluster=cluster, job=job)
        m, p = plan.num_micro_batches(job.global_batch), plan.dims.pp
        assert more.time_breakdown_s["pipeline_actions"] == pytest.approx(2 * m * 1e-3 if charged else 0.0)
        # 1F1B's critical path holds (m + p - 1) forward + backward pairs, each paying two actions
        delta = more.step_time_s - base.step_time_s
        assert delta == pytest.approx(2 * (m + p - 1) * 1e-3 if charged else 0.0)


def test_fit_removes_the_probe_compute_at_the_shared_speed() -> None:
    from planner.profiler.host_fit import _pipe_action_us
    samples = [HostSamples(passes=[], together_s=[], dtensor_fwd_s=0.0, dtensor_bwd_s=0.0, sync_wait_s=0.0,
                           collective_s=0.0, pipe_action_s=5e-3, pipe_compute_s=1e-3) for _ in range(4)]
    assert _pipe_action_us(samples, shared_cores=2.0) == pytest.approx(3000.0)  # 5 ms - 4 / 2 x 1 ms
    assert _pipe_action_us(samples, shared_cores=None) == pytest.approx(4000.0)
