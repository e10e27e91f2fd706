"""Plan.dims -> named DeviceMeshes on planner.plan.rank_grid (the cost model's grid, never a copy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from planner.plan import Axis, Plan, physical_ranks, rank_grid

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

    def cp_groups(self) -> list[list[int]]:
        """Every CP group's global ranks in CP order (the cp axis of the attention grid)."""
        cp_dim = self.world.mesh_dim_names.index(Axis.CP.value)
        grid = self.world.mesh.movedim(cp_dim, -1)
        return grid.reshape(-1, grid.shape[-1]).tolist()

    def local_rank(self, axis: Axis) -> int:
        match axis:
            case Axis.EDP | Axis.EP | Axis.ETP:
                return 0 if self.expert is None else self.expert.get_local_rank(axis.value)
            case _:
                return self.world.get_local_rank(axis.value)


def logical_rank(plan: Plan, physical_rank: int) -> int:
    """The rank-grid rank this process plays: the inverse of the plan's device mapping.

    The launcher numbers processes physically (node_rank * nproc + local_rank, one per GPU); the
    process group is then initialised with the logical rank, before any group exists, so every
    group (and its rank order, which torch sorts by global rank) is the rank grid's, while the
    process keeps driving its own GPU (LOCAL_RANK).
    """
    phys = physical_ranks(plan)
    return physical_rank if phys is None else int(np.flatnonzero(phys == physical_rank)[0])


def build_meshes(plan: Plan, *, device_type: str, moe: bool) -> Meshes:
    """Create both meshes (collective: every rank must call this with the same plan)."""
    grid = rank_grid(plan)
    world = DeviceMesh(device_type, torch.as_tensor(grid.attention), mesh_dim_names=tuple(a.value for a in plan.rank_order))
    expert = None
    if moe:
        names = tuple(a.value for a in plan.expert_rank_order)
        expert = DeviceMesh(device_type, torch.as_tensor(grid.expert), mesh_dim_names=names)
    # dp and cp flattened: the ranks holding replicas of the same (non-expert) weights.
    pair = tuple(a.value for a in plan.rank_order if a in (Axis.DP, Axis.CP))
    dp_cp = world[pair]._flatten(DP_CP)
    return Meshes(world=world, dp_cp=dp_cp, expert=expert)
