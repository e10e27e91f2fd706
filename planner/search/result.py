"""The typed output of a search: candidates, stats, the best plan (priced once, with its timeline)
and the ILP post-pass summaries. The report reads these fields; nothing is looked up by equality."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost import Estimate
from planner.plan import Plan


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    plan: Plan
    estimate: Estimate | None  # None when never costed (invalid or pruned)
    fits: bool
    reason: str | None  # why it is not the answer: invalid, OOM by how much, pruned, dominated
    rank: int | None = None  # 1 = best fitting plan


@dataclass(slots=True, kw_only=True)
class SearchStats:
    """Counts of knob settings (a layout's grid counts once per setting): enumerated = invalid +
    pruned + costed, with invalid and pruned counted in settings like the rest."""

    enumerated: int = 0
    layouts: int = 0
    invalid: int = 0
    pruned: int = 0  # memory lower bound, not refined (probe bound) or dominated knobs
    costed: int = 0
    tuned: int = 0  # of the costed: ILP variants (uneven stages, expert placement) beyond the grid
    fitting: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSummary:
    """The stage-partition ILP on a top plan: uneven blocks per stage and what they bought."""

    plan: str
    blocks_per_stage: list[int]
    status: str
    gap: float | None
    solve_s: float
    even_step_time_s: float
    uneven_step_time_s: float
    uneven_fits: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementSummary:
    """The expert-placement ILP on the best plan (report/moe.py draws it)."""

    expert_tokens: list[list[float]]
    method: str
    status: str
    gap: float | None
    solve_s: float
    cost_s: float  # the solver's objective (busiest-rank expert time + cross-layer traffic)
    round_robin_s: float
    step_time_s: float  # the cost model's step time of the placed plan
    unplaced_step_time_s: float  # ... of its twin with contiguous experts, priced with the same trace
    all_to_all_saved_s: float  # per step, EP all-to-all seconds of the twin minus the placed plan
    saved_s: float  # per step, unplaced_step_time_s - step_time_s
    synthetic_trace: bool
    ep: int
    rank_order: list[str]
    expert_axis: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingSummary:
    """Device mapping of the best plan on a cluster with uneven links (search/mapping.py).

    node_of: logical -> physical node of the chosen method; slowest_link_s / identity_s: the
    ILP's objective (busiest NIC or pipeline link) for it and for the identity; *_step_s: the
    cost model's step time of the identity, the chosen, the heuristic and the ILP mapping; gap:
    the ILP's proven relative gap (None where it did not run, over 16 units).
    """

    node_of: list[int]
    slowest_link_s: float
    identity_s: float
    status: str
    method: str = "ilp"
    gap: float | None = None
    identity_step_s: float | None = None
    mapped_step_s: float | None = None
    heuristic_step_s: float | None = None
    heuristic_solve_s: float | None = None
    ilp_step_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneResult:
    partition: PartitionSummary | None = None
    moe: PlacementSummary | None = None
    device_mapping: MappingSummary | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    candidates: list[Candidate]
    best: Candidate | None  # the same object as candidates[best_index], its estimate with a timeline
    best_index: int | None
    pareto: list[Candidate]
    stats: SearchStats
    nothing_fits: str | None = None  # one line: smallest shortfall and what would make it fit
    moe: PlacementSummary | None = None
    partition: PartitionSummary | None = None
    device_mapping: MappingSummary | None = None
    top: list[Candidate] = field(default_factory=list)
