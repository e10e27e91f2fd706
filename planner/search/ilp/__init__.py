"""ILPs (pulp + HiGHS): solver plumbing, stage partition, expert placement, device mapping; routing traces."""

from planner.search.ilp.devices import DeviceMapping, DeviceMappingProblem, map_devices
from planner.search.ilp.experts import ExpertPlacement, ExpertPlacementProblem, place_experts
from planner.search.ilp.routing import load_routing_trace
from planner.search.ilp.solver import SolveInfo, SolveStatus, highs_available, solve
from planner.search.ilp.stages import StagePartition, StagePartitionProblem, partition_stages

__all__ = [
    "DeviceMapping", "DeviceMappingProblem", "ExpertPlacement", "ExpertPlacementProblem", "SolveInfo",
    "SolveStatus", "StagePartition", "StagePartitionProblem", "highs_available", "load_routing_trace",
    "map_devices", "partition_stages", "place_experts", "solve",
]
