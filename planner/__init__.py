"""planner: auto-parallel planner and cost-model simulator for LLM training."""

from planner.plan import ParallelDims, Plan
from planner.scenario import Scenario, load_scenario

__all__ = ["ParallelDims", "Plan", "Scenario", "load_scenario"]
