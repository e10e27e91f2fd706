"""Processor sharing: more ranks than cores on one node (CPU gloo runs), step time from total work.

The kernel and host terms price a rank's work at the speed of one rank running alone on the
node. When G ranks share a node whose ranks together progress at C cores' worth of that speed
(HostOverhead.shared_cores, measured: C = ranks x solo pass time / pass time with every rank at
once), the OS time-shares the cores: with k ranks runnable, each advances at rate min(1, C / k)
(processor sharing). A rank that waits (a pipeline bubble, a blocking collective) is not
runnable and gives its slice to the others, so a pipeline on an oversubscribed node runs at
about the speed of data parallelism: both do the same total CPU work.

Two bounds hold for any schedule under processor sharing:
- critical path: no rank runs faster than alone, so step >= T_sim, the step simulated at
  solo speed (schedule.py with the solo-speed chunk times, + exposed communication);
- capacity: the node retires at most C units of solo work per second, so the busy work
  W = sum_i B_i of its ranks (forward, backward, recompute, optimizer at solo speed) takes at
  least W / C, plus the collective time during which every rank is blocked at once.
step = max(T_sim, W / C + E) is exact for the two ends (every rank always busy: data or tensor
parallelism, W / C + E; a single busy rank at a time: T_sim) and the lower bound between them.
E, the exposed TP / EP / CP / DP collective time of the critical rank, is charged in full:
without pipelining every rank reaches a collective together and none computes meanwhile. With
pipelining the other stages could in principle fill the cores a blocked stage leaves, but in
1F1B's steady state the stages advance in lockstep (each forward waits on the previous stage)
and reach their collectives at nearly the same times; measured on 2 cores x 4 gloo ranks
(bench/calibrate.py), tp2 x pp2 and dp2 ep2 x pp2 take as long as tp2 x dp2 and dp4 ep4, i.e.
nothing of E was hidden. Pipeline send/recv bytes are left out of E: a stage waiting on its
neighbour's activations frees its core for the ranks that produce them. The per-action host
time of the pipeline schedule (HostOverhead.pipe_action_us: Python per action, p2p calls, the
wake-up of a rank blocked on its neighbour) is in E, through the chunks' exposed time: every
stage pays it on every action, in lockstep, doing no model work meanwhile (measured: pp4 on
2 cores x 4 ranks ran slower than dp4 although both do the same compute).

Inactive (returns T_sim) without a measured `shared_cores` or when the node has no more ranks
than cores: GPUs run one process per device and share nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.hardware import HardwareProfile
from planner.scenario import ClusterSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWork:
    """Solo-speed busy seconds per step of each pipeline rank (every DP/TP/CP/EP rank of a stage
    does the same work) and the collective seconds every rank spends blocked at once."""

    stage_busy_s: list[float]
    blocked_s: float


def ranks_per_node(cluster: ClusterSpec) -> int:
    return min(cluster.gpus_per_node, cluster.world_size)


def capacity_s(work: NodeWork, *, hw: HardwareProfile, cluster: ClusterSpec) -> float:
    """W / C + E for one node, 0 when nothing is shared.

    A node holds G ranks; its pipeline ranks are spread evenly over the stages (each stage's
    ranks are G / pp of the node's, or whole nodes with the same mix), so W = G x mean_s(B_s).
    """
    cores = hw.host.shared_cores if hw.host is not None else None
    g = ranks_per_node(cluster)
    if cores is None or g <= cores:
        return 0.0
    mean_busy_s = sum(work.stage_busy_s) / len(work.stage_busy_s)
    return g * mean_busy_s / cores + work.blocked_s


def shared_step_s(critical_path_s: float, work: NodeWork, *, hw: HardwareProfile, cluster: ClusterSpec) -> float:
    """max(critical path at solo speed, node capacity bound); see the module docstring."""
    return max(critical_path_s, capacity_s(work, hw=hw, cluster=cluster))
