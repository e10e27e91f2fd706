"""Heterogeneous GPU types (Metis, Um et al. 2024): pipeline stages on faster GPUs take more layers.

Each stage runs on one node group (the slowest GPU it spans sets its pace, cost/placement.py);
the partition gives every (virtual) stage a share of the transformer blocks proportional to its
GPUs' large-GEMM rate from their profiles, and the cost model judges it against the others.
"""

from __future__ import annotations

from planner import cost
from planner.hardware import node_group_profiles
from planner.plan import Plan, Recompute, ZeroStage
from planner.search.pricer import Pricer
from planner.search.result import Candidate

_TOP = 3  # fitting pipelined plans that get a speed-proportional partition
_GEMM_FLOPS = 1e12  # one large GEMM: where the efficiency curves reach their ceiling


def speed_partitions(run: Pricer) -> list[Candidate]:
    """Price a speed-proportional stage partition for the best pipelined plans on a mixed cluster."""
    cluster = run.scenario.cluster
    if not cluster.heterogeneous_gpus:
        return []
    fitting = sorted((c for c in run.candidates if c.fits and c.plan.dims.pp > 1), key=lambda c: c.estimate.step_time_s)
    out = []
    for cand in fitting[:_TOP]:
        blocks = proportional_blocks(run, cand.plan)
        if blocks is None or blocks == cand.plan.stage_blocks(len(run.graph.blocks)):
            continue
        # the faster stages now hold more layers: if that overflows their memory, shard the
        # states (ZeRO-3), then recompute, before giving the partition up
        for knobs in ({}, {"zero_stage": ZeroStage.PARAMETERS}, {"zero_stage": ZeroStage.PARAMETERS,
                                                                  "recompute": Recompute.FULL}):
            if knobs.get("zero_stage") and cand.plan.dims.dp * cand.plan.dims.cp == 1:
                break
            tuned = run.cost(cand.plan.model_copy(update={"blocks_per_stage": blocks} | knobs))
            out.append(tuned)
            if tuned.fits:
                break
    return out


def proportional_blocks(run: Pricer, plan: Plan) -> list[int] | None:
    """Blocks per chunk (schedule order, chunk c on stage c % pp) proportional to the stage's speed."""
    profiles = node_group_profiles(run.hw, run.scenario.cluster)
    groups = cost.plan_placement(plan, run.scenario.cluster).stage_group
    precision = run.scenario.job.precision
    speed = [1.0 / profiles[groups[c % plan.dims.pp]].matmul_s(_GEMM_FLOPS, precision=precision)
             for c in range(plan.num_chunks)]
    total = len(run.graph.blocks)
    if total < plan.num_chunks:
        return None
    raw = [total * s / sum(speed) for s in speed]
    blocks = [max(1, int(r)) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda c: raw[c] - int(raw[c]), reverse=True)
    for c in by_remainder[:max(0, total - sum(blocks))]:
        blocks[c] += 1
    while sum(blocks) > total:  # the max(1, .) floor overshot: take from the largest
        blocks[blocks.index(max(blocks))] -= 1
    return blocks
