"""The rank grid of a plan: which global rank sits at every coordinate (the one copy of the rule).

A plan lists its axes outermost first (`rank_order`, e.g. pp, dp, cp, tp). The global rank is the
mixed-radix number over those coordinates with the last axis fastest, as in picotron's
`torch.arange(world).view(dp, pp, cp, tp)` grid: rank = ((c0 * d1 + c1) * d2 + c2) * d3 + c3.
Expert layers re-split the same world over `expert_rank_order` (pp, edp, ep, etp) - MoE
parallel folding (Liu et al. 2025): the GPUs of pipeline stage s (attention-grid ranks,
ascending) are renumbered 0..n-1 and laid out as a mixed radix over the non-pp expert axes, so a
stage's expert layers stay on that stage's GPUs whatever the two orders are. A group along one
axis is the set of ranks that differ only in that coordinate. The cost model, the search, the
report and the executor (executor/mesh.py) all read this grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.plan.dims import Axis, ParallelDims
from planner.plan.schema import Plan


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RankGrid:
    """Global rank at every coordinate of the attention grid and of the folded expert grid."""

    attention_order: tuple[Axis, ...]
    expert_order: tuple[Axis, ...]
    attention: np.ndarray  # shape [degree(a) for a in attention_order]
    expert: np.ndarray  # shape [degree(a) for a in expert_order]

    def grid_of(self, axis: Axis) -> tuple[np.ndarray, tuple[Axis, ...]]:
        """The grid an axis lives on: expert axes (edp, ep, etp) on the expert grid."""
        if axis in self.attention_order:
            return self.attention, self.attention_order
        return self.expert, self.expert_order

    def stride(self, axis: Axis) -> int:
        """Rank distance between neighbours along `axis` at the origin (1 for the innermost axis)."""
        grid, order = self.grid_of(axis)
        if grid.shape[order.index(axis)] == 1:
            return 1
        index = [0] * grid.ndim
        index[order.index(axis)] = 1
        return int(grid[tuple(index)] - grid.flat[0])

    def groups(self, axis: Axis) -> AxisGroups:
        """Every group of one axis: ranks that differ only in that axis' coordinate."""
        grid, order = self.grid_of(axis)
        pos = order.index(axis)
        members = np.moveaxis(grid, pos, -1).reshape(-1, grid.shape[pos])
        group_of = np.empty(grid.size, dtype=np.int64)
        group_of[members] = np.arange(members.shape[0])[:, None]
        return AxisGroups(axis=axis, degree=grid.shape[pos], group_of=group_of, members=members)


def rank_grid(plan: Plan) -> RankGrid:
    """The plan's rank grid (cached by degrees and orders: the search prices many twins)."""
    return _grid(plan.dims, tuple(plan.rank_order), tuple(plan.expert_rank_order))


@lru_cache(maxsize=16)  # a 16M-rank grid is ~256 MB: keep few
def _grid(dims: ParallelDims, order: tuple[Axis, ...], expert_order: tuple[Axis, ...]) -> RankGrid:
    attention = np.arange(dims.world_size).reshape([dims.degree(a) for a in order])
    stages = np.sort(np.moveaxis(attention, order.index(Axis.PP), 0).reshape(dims.pp, -1), axis=1)
    inner = [a for a in expert_order if a != Axis.PP]
    expert = stages.reshape([dims.pp] + [dims.degree(a) for a in inner])
    expert = np.transpose(expert, [[Axis.PP, *inner].index(a) for a in expert_order])
    for array in (attention, expert):
        array.setflags(write=False)
    return RankGrid(attention_order=order, expert_order=expert_order, attention=attention, expert=expert)


def physical_ranks(plan: Plan) -> np.ndarray | None:
    """Logical rank -> the physical rank (node * gpus_per_node + local GPU, torchrun's numbering)
    its device mapping puts it on; None for the identity."""
    if plan.device_mapping is None:
        return None
    pairs = np.asarray(plan.device_mapping, dtype=np.int64)
    per_node = plan.dims.world_size // (int(pairs[:, 0].max()) + 1)
    return pairs[:, 0] * per_node + pairs[:, 1]


def device_grid(plan: Plan) -> RankGrid:
    """rank_grid with every logical rank replaced by the physical rank it runs on (the mapping
    applied): what the cost model prices and the executor builds its process groups from."""
    grid = rank_grid(plan)
    phys = physical_ranks(plan)
    if phys is None:
        return grid
    return RankGrid(attention_order=grid.attention_order, expert_order=grid.expert_order,
                    attention=phys[grid.attention], expert=phys[grid.expert])


def mapping_from_nodes(node_of: list[int], *, gpus_per_node: int) -> list[tuple[int, int]]:
    """A node-level mapping (logical node u -> physical node node_of[u], GPUs kept in order)."""
    return [(node_of[r // gpus_per_node], r % gpus_per_node) for r in range(len(node_of) * gpus_per_node)]


def plan_groups(plan: Plan) -> list[AxisGroups]:
    """Attention-layer groups (tp, cp, dp, pp) then, for expert-parallel plans, ep, etp, edp."""
    grid, dims = rank_grid(plan), plan.dims
    axes = list(plan.rank_order)
    if dims.ep > 1 or dims.etp > 1:
        axes += [a for a in plan.expert_rank_order if a != Axis.PP]
    inner_first = [Axis.TP, Axis.CP, Axis.EP, Axis.ETP, Axis.DP, Axis.EDP, Axis.PP]
    return sorted((grid.groups(a) for a in axes), key=lambda g: inner_first.index(g.axis))
