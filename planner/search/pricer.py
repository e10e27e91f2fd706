"""Pricing candidates for the search: one cached call into cost/ per distinct plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from planner.cost import Estimate
from planner.graph import ModelGraph
from planner.hardware import HardwareProfile
from planner.plan import ParallelDims, Plan
from planner.scenario import GIB, ClusterSpec, JobSpec, Scenario
from planner.search import space as ss
from planner.search.result import Candidate, SearchStats


class Estimator(Protocol):
    """What search needs from the cost model (planner.cost satisfies it; tests pass stand-ins)."""

    def estimate(self, graph: ModelGraph, plan: Plan, *, hw: HardwareProfile, cluster: ClusterSpec, job: JobSpec,
                 timeline: bool = False) -> Estimate: ...

    def memory_lower_bound_bytes(self, graph: ModelGraph, plan: Plan, job: JobSpec, cluster: ClusterSpec) -> float: ...


@dataclass(slots=True)
class Pricer:
    """Mutable state of one search: the inputs, every candidate so far, the costing cache.

    The tune post-pass prices its ILP variants through the same object, so every plan the
    search reports was priced by cost/ exactly once."""

    graph: ModelGraph
    scenario: Scenario
    hw: HardwareProfile
    est: Estimator
    candidates: list[Candidate] = field(default_factory=list)
    stats: SearchStats = field(default_factory=SearchStats)
    cache: dict = field(default_factory=dict)
    closest_bound: tuple[float, Plan] | None = None  # smallest model-state shortfall (bytes, plan)
    grids: dict = field(default_factory=dict)  # ParallelDims -> size of its knob grid
    frugal_plans: dict = field(default_factory=dict)  # ParallelDims -> its least-memory plan
    tick: Callable[[], None] = lambda: None
    cp_choice: dict = field(default_factory=dict)  # ParallelDims -> (cp_kind, cp_a2a) that probed fastest
    offload: dict = field(default_factory=dict)  # this pass's offload setting ({} = none)

    def cost(self, plan: Plan, *, reason: str | None = None) -> Candidate:
        """Price a plan once (cached by its JSON); OOM candidates carry how much and where."""
        key = plan_key(plan)
        if key in self.cache:
            return self.cache[key]
        e = self.est.estimate(self.graph, plan, hw=self.hw, cluster=self.scenario.cluster, job=self.scenario.job)
        fits = bool(e.fits) and e.peak_memory_bytes <= self.capacity(e)
        why = reason if fits else oom_reason(e, capacity=self.capacity(e))
        cand = Candidate(plan=plan, estimate=e, fits=fits, reason=why)
        self.cache[key] = cand
        self.candidates.append(cand)
        self.stats.costed += 1
        self.tick()
        return cand

    def capacity(self, e: Estimate) -> float:
        return usable_capacity_bytes(e, self.scenario)

    def grid(self, lay: ParallelDims) -> int:
        if lay not in self.grids:
            self.grids[lay] = ss.knob_grid_size(self.scenario, lay)
        return self.grids[lay]

    def frugal(self, lay: ParallelDims) -> Plan:
        """The layout's least-memory plan (built once: it bounds memory and records rejections)."""
        if lay not in self.frugal_plans:
            knobs = replace(ss.frugal_knobs(self.scenario, lay), offload=self.offload)
            self.frugal_plans[lay] = ss.make_plan(lay, knobs)
        return self.frugal_plans[lay]

    def with_choices(self, lay: ParallelDims, knobs: ss.Knobs) -> ss.Knobs:
        """`knobs` at this pass's offload and the layout's probed CP kind."""
        kind, a2a = self.cp_choice.get(lay, ss.cp_options(self.scenario, lay)[0])
        return replace(knobs, offload=self.offload, cp_kind=kind, cp_a2a=a2a,
                       fp8_recipe=ss.fp8_recipes(self.scenario)[0], balance=ss.balance_policies(self.scenario)[0])

    def reject(self, plan: Plan, reason: str) -> None:
        self.candidates.append(Candidate(plan=plan, estimate=None, fits=False, reason=reason))


def plan_key(plan: Plan) -> tuple:
    """A cheap identity for the costing cache (model_dump_json was 10% of a DeepSeek search)."""
    placement = None if plan.expert_placement is None else tuple(map(tuple, plan.expert_placement))
    blocks = None if plan.blocks_per_stage is None else tuple(plan.blocks_per_stage)
    load = None if plan.expert_load is None else tuple(map(tuple, plan.expert_load))
    mapping = None if plan.device_mapping is None else tuple(plan.device_mapping)
    return (plan.dims, plan.micro_batch_size, plan.virtual_stages, plan.schedule,
            plan.zero_stage, plan.recompute, plan.sequence_parallel, blocks, placement, load,
            tuple(plan.rank_order), tuple(plan.expert_rank_order), mapping, plan.cp_kind, plan.cp_a2a,
            tuple(plan.offload.items()), plan.vocab_parallel, plan.fp8_recipe, plan.balance)


def usable_capacity_bytes(e: Estimate, scenario: Scenario) -> float:
    """The memory a plan may use: the estimate's capacity times [search] memory_fraction (the one
    rule `search` ranks by and `estimate` reports 'fits' by)."""
    return e.memory_capacity_bytes * scenario.search.memory_fraction


def oom_reason(e: Estimate, *, capacity: float) -> str:
    stage = max(range(len(e.stage_memory)), key=lambda s: sum(e.stage_memory[s].values()))
    terms = e.stage_memory[stage]
    top = max(terms, key=terms.get)
    over = (e.peak_memory_bytes - capacity) / GIB
    return f"OOM by {over:.1f} GiB on stage {stage} ({e.peak_memory_bytes / GIB:.1f} of {capacity / GIB:.1f} GiB; largest term {top})"


