"""Processor sharing (cost/sharing.py): more ranks than cores price the node's total work; GPUs unaffected."""

from __future__ import annotations

import pytest
import torch

from planner.scenario import cluster_preset
from planner.cost import estimate
from planner.cost.sharing import NodeWork, capacity_s, shared_step_s
from planner.graph import extract_graph
from planner.hardware import HostOverhead, datasheet_profile
from planner.scenario import PRESETS
from planner.plan import Plan
from planner.scenario import JobSpec, Precision

CLUSTER = cluster_preset("cpu-local")  # 4 ranks on one node
JOB = JobSpec(seq_len=256, global_batch=8, precision=Precision.FP32)
GRAPH = extract_graph(PRESETS["tiny-dense"], seq_len=256, batch=1, dtype=torch.float32)


def _cpu(cores: float | None, **host: float):
    fields = {"fwd_us_per_op": 20.0, "bwd_us_per_op": 20.0, "overlapped": False} | host
    return datasheet_profile(CLUSTER).model_copy(update={"host": HostOverhead(shared_cores=cores, **fields)})


def _step(dims: dict[str, int], hw) -> float:
    return estimate(GRAPH, Plan.model_validate({"dims": dims}), hw=hw, cluster=CLUSTER, job=JOB)


def test_capacity_bound_is_total_work_over_cores_plus_blocked_time() -> None:
    symmetric = NodeWork(stage_busy_s=[1.0], blocked_s=0.1)  # every rank blocks at once
    assert capacity_s(symmetric, hw=_cpu(2.0), cluster=CLUSTER) == pytest.approx(4 * 1.0 / 2 + 0.1)
    work = NodeWork(stage_busy_s=[1.0, 1.0, 0.5, 0.5], blocked_s=0.1)  # 4 stages: mean busy 0.75
    assert capacity_s(work, hw=_cpu(2.0), cluster=CLUSTER) == pytest.approx(4 * 0.75 / 2 + 0.1)
    assert shared_step_s(3.0, work, hw=_cpu(2.0), cluster=CLUSTER) == 3.0  # critical path dominates
    assert capacity_s(work, hw=_cpu(None), cluster=CLUSTER) == 0.0
    assert capacity_s(work, hw=_cpu(4.0), cluster=CLUSTER) == 0.0  # as many cores as ranks: no sharing


def test_pipeline_and_data_parallel_cost_the_same_cpu_work_when_oversubscribed() -> None:
    """Alone on their cores PP pays its bubble; sharing 4 ranks on 1 core's worth, the idle stages'
    slices go to busy ones and both plans take the node's total work over its cores."""
    free, shared = _cpu(None), _cpu(1.0)
    dp_free, pp_free = _step({"dp": 4}, free), _step({"pp": 4}, free)
    assert pp_free.bubble_fraction > 0.2 and pp_free.step_time_s > 1.25 * dp_free.step_time_s
    dp, pp = _step({"dp": 4}, shared), _step({"pp": 4}, shared)
    work_dp = dp.step_time_s - dp.time_breakdown_s["exposed_comm"]  # minus the blocked all-reduces
    work_pp = pp.step_time_s - pp.time_breakdown_s["exposed_comm"]  # minus the loss all-reduce
    assert pp.time_breakdown_s["exposed_comm"] < 0.01 * pp.step_time_s
    assert work_pp == pytest.approx(work_dp, rel=0.05)  # DP also replicates the optimizer step
    assert dp.time_breakdown_s["core_sharing"] > 0 and pp.time_breakdown_s["core_sharing"] > 0


def test_gpu_profiles_share_nothing() -> None:
    cluster = cluster_preset("dgx-h100")
    hw = datasheet_profile(cluster)
    assert hw.host is not None and hw.host.shared_cores is None and hw.runtime_bytes == 0
    job = JobSpec(seq_len=256, global_batch=16, precision=Precision.BF16)
    graph = extract_graph(PRESETS["tiny-dense"], seq_len=256, batch=1, dtype=torch.bfloat16)
    for dims in ({"dp": 8}, {"pp": 4, "dp": 2}):
        est = estimate(graph, Plan.model_validate({"dims": dims}), hw=hw, cluster=cluster, job=job)
        assert est.time_breakdown_s["core_sharing"] == 0.0


def test_runtime_baseline_is_a_named_memory_term() -> None:
    base = _step({"pp": 2, "dp": 2}, _cpu(2.0))
    hw = _cpu(2.0).model_copy(update={"runtime_bytes": 0.35 * 2**30})
    with_runtime = _step({"pp": 2, "dp": 2}, hw)
    assert all(terms["runtime"] == 0.35 * 2**30 for terms in with_runtime.stage_memory)
    assert "runtime" not in base.stage_memory[0]
    assert with_runtime.peak_memory_bytes - base.peak_memory_bytes == pytest.approx(0.35 * 2**30)
