"""Which GPUs form each parallel group: the rank grid of a plan, for the report's device map.

A plan lists its axes outermost first (`rank_order`, e.g. pp, dp, cp, tp). The global rank is the
mixed-radix number over those coordinates with the last axis fastest, as in picotron's
`torch.arange(world).view(dp, pp, cp, tp)` grid: rank = ((c0 * d1 + c1) * d2 + c2) * d3 + c3.
Expert layers re-split the same world over `expert_rank_order` (pp, edp, ep, etp) - MoE
parallel folding. A group along one axis is the set of ranks that differ only in that
coordinate. executor/mesh.py builds its DeviceMeshes from the same grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.plan import Axis, Plan


@dataclass(frozen=True, slots=True, kw_only=True)
class AxisGroups:
    """The groups of one axis: group_of[rank] is the group index, members[g] its ranks."""

    axis: Axis
    degree: int
    group_of: np.ndarray  # [world] int
    members: np.ndarray  # [num_groups, degree] int, ranks in coordinate order

    @property
    def num_groups(self) -> int:
        return int(self.members.shape[0])


def attention_grid(plan: Plan) -> np.ndarray:
    """Global rank at every coordinate, axes in plan.rank_order, last axis fastest."""
    dims = plan.parallel_dims
    shape = [dims.degree(a) for a in plan.rank_order]
    return np.arange(int(np.prod(shape))).reshape(shape)


def expert_grid(plan: Plan) -> np.ndarray:
    """Global rank at every expert coordinate, axes in plan.expert_rank_order.

    As executor/mesh.py does: the GPUs of pipeline stage s (attention-grid ranks, ascending) are
    renumbered 0..n-1 and laid out as a mixed radix over the non-pp expert axes, so a stage's
    expert layers stay on that stage's GPUs whatever the two orders are.
    """
    dims = plan.parallel_dims
    att = np.moveaxis(attention_grid(plan), plan.rank_order.index(Axis.PP), 0).reshape(dims.pp, -1)
    stage_ranks = np.sort(att, axis=1)
    inner = [a for a in plan.expert_rank_order if a != Axis.PP]
    grid = stage_ranks.reshape([dims.pp] + [dims.degree(a) for a in inner])
    order = [Axis.PP, *inner]
    return np.transpose(grid, [order.index(a) for a in plan.expert_rank_order])


def grid_groups(grid: np.ndarray, order: list[Axis]) -> list[AxisGroups]:
    """Groups of every axis of a rank grid: ranks that differ only in that axis' coordinate."""
    out = []
    for pos, axis in enumerate(order):
        members = np.moveaxis(grid, pos, -1).reshape(-1, grid.shape[pos])
        group_of = np.empty(grid.size, dtype=np.int64)
        group_of[members] = np.arange(members.shape[0])[:, None]
        out.append(AxisGroups(axis=axis, degree=grid.shape[pos], group_of=group_of, members=members))
    return out


def plan_groups(plan: Plan) -> list[AxisGroups]:
    """Attention-layer groups (tp, cp, dp, pp) then, for expert-parallel plans, ep, etp, edp."""
    dims = plan.parallel_dims
    groups = grid_groups(attention_grid(plan), list(plan.rank_order))
    if dims.ep > 1 or dims.etp > 1:
        expert = grid_groups(expert_grid(plan), list(plan.expert_rank_order))
        groups += [g for g in expert if g.axis != Axis.PP]
    inner_first = [Axis.TP, Axis.CP, Axis.EP, Axis.ETP, Axis.DP, Axis.EDP, Axis.PP]
    return sorted(groups, key=lambda g: inner_first.index(g.axis))


def rank_ranges(ranks: list[int]) -> str:
    """Compact text for a rank list: 0-7, or a strided run `0, 8, ..., 56 (step 8)`."""
    if len(ranks) == 1:
        return str(ranks[0])
    steps = {b - a for a, b in zip(ranks, ranks[1:])}
    if len(steps) == 1:
        step = steps.pop()
        if step == 1:
            return f"{ranks[0]}-{ranks[-1]}"
        if len(ranks) > 4:
            return f"{ranks[0]}, {ranks[1]}, ..., {ranks[-1]} (step {step})"
    return ", ".join(str(r) for r in ranks[:8]) + (", ..." if len(ranks) > 8 else "")


def group_summary(group: AxisGroups, *, gpus_per_node: int, nvlink_domain: int) -> dict[str, object]:
    """One row of the device-map table: how GPU 0's group of this axis sits on the machine."""
    first = [int(r) for r in group.members[group.group_of[0]]]
    nodes = sorted({r // gpus_per_node for r in first})
    domains = {r // nvlink_domain for r in first}
    return {
        "axis": group.axis.value,
        "degree": group.degree,
        "num_groups": group.num_groups,
        "example_ranks": rank_ranges(first),
        "example_nodes": rank_ranges(nodes),
        "nodes_per_group": len(nodes),
        "in_nvlink_domain": len(domains) == 1,
    }
