"""Plan.dims -> named DeviceMeshes on the same rank grid as planner.cost (mixed radix, last axis fastest)."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from planner.plan import Axis, Plan

DP_CP = "dp_cp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Meshes:
    """The attention grid (pp, dp, cp, tp in plan.rank_order) and the folded expert grid.

    `expert` re-splits every pipeline stage's GPUs as edp x ep x etp (MoE parallel folding,
    Liu et al. 2025); it is None for dense models.
    """

    world: DeviceMesh
    dp_cp: DeviceMesh
    expert: DeviceMesh | None

    def group(self, axis: Axis) -> dist.ProcessGroup:
        match axis:
            case Axis.EDP | Axis.EP | Axis.ETP:
                assert self.expert is not None, "expert axes need an MoE model"
                return self.expert.get_group(axis.value)
            case _:
                return self.world.get_group(axis.value)

    def size(self, axis: Axis) -> int:
        match axis:
            case Axis.EDP | Axis.EP | Axis.ETP:
                return 1 if self.expert is None else self.expert.size(self.expert.mesh_dim_names.index(axis.value))
            case _:
                return self.world.size(self.world.mesh_dim_names.index(axis.value))

    def local_rank(self, axis: Axis) -> int:
        match axis:
            case Axis.EDP | Axis.EP | Axis.ETP:
                return 0 if self.expert is None else self.expert.get_local_rank(axis.value)
            case _:
                return self.world.get_local_rank(axis.value)


def attention_grid(plan: Plan) -> torch.Tensor:
    """Global rank at every (axis...) coordinate, axes in plan.rank_order, last axis fastest."""
    dims = plan.parallel_dims
    shape = [dims.degree(axis) for axis in plan.rank_order]
    return torch.arange(prod(shape)).view(shape)


def expert_grid(plan: Plan) -> torch.Tensor:
    """Global rank at every expert coordinate, axes in plan.expert_rank_order.

    The GPUs of pipeline stage s (their attention-grid ranks, ascending) are re-numbered 0..n-1
    and laid out as a mixed radix over the non-pp expert axes; so expert layers of stage s stay on
    stage s's GPUs whatever the two orders are.
    """
    dims = plan.parallel_dims
    att = attention_grid(plan).movedim(plan.rank_order.index(Axis.PP), 0).reshape(dims.pp, -1)
    stage_ranks = att.sort(dim=1).values  # [pp, dp*cp*tp]
    inner = [a for a in plan.expert_rank_order if a != Axis.PP]
    local = torch.arange(dims.attention_slice).view([dims.degree(a) for a in inner])
    grid = stage_ranks[:, local.flatten()].view([dims.pp] + [dims.degree(a) for a in inner])
    order = [Axis.PP] + inner
    return grid.permute([order.index(a) for a in plan.expert_rank_order])


def build_meshes(plan: Plan, *, device_type: str, moe: bool) -> Meshes:
    """Create both meshes (collective: every rank must call this with the same plan)."""
    world = DeviceMesh(device_type, attention_grid(plan), mesh_dim_names=tuple(a.value for a in plan.rank_order))
    expert = None
    if moe:
        names = tuple(a.value for a in plan.expert_rank_order)
        expert = DeviceMesh(device_type, expert_grid(plan), mesh_dim_names=names)
    # dp and cp flattened: the ranks holding replicas of the same (non-expert) weights.
    pair = tuple(a.value for a in plan.rank_order if a in (Axis.DP, Axis.CP))
    dp_cp = world[pair]._flatten(DP_CP)
    return Meshes(world=world, dp_cp=dp_cp, expert=expert)
