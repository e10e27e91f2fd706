"""The plan: degrees (dims.py), the plan file (schema.py), its rank grid (grid.py) and validity
(validity.py) - the contract between the planner and the executor. A leaf: pydantic, numpy, stdlib."""

from planner.plan.dims import DEFAULT_EXPERT_RANK_ORDER, DEFAULT_RANK_ORDER, Axis, ParallelDims
from planner.plan.grid import AxisGroups, RankGrid, device_grid, mapping_from_nodes, physical_ranks, plan_groups, rank_grid
from planner.plan.schema import (PLAN_VERSION, BalancePolicy, CpKind, Fp8Recipe, OffloadState, OffloadTier, Plan,
                                 Recompute, Schedule, ZeroStage, even_split)
from planner.plan.validity import HasTarget, Target, check, problems, schedule_problem

__all__ = [
    "DEFAULT_EXPERT_RANK_ORDER", "DEFAULT_RANK_ORDER", "PLAN_VERSION", "Axis", "AxisGroups", "BalancePolicy", "CpKind",
    "Fp8Recipe", "HasTarget", "OffloadState", "OffloadTier",
    "ParallelDims", "Plan", "RankGrid", "Recompute", "Schedule", "Target", "ZeroStage", "check", "device_grid",
    "even_split", "mapping_from_nodes", "physical_ranks", "plan_groups", "problems", "rank_grid", "schedule_problem",
]
