"""Search: enumerate layouts (space.py), price them with cost/ (pricer.py, engine.py), refine the
best with the ILPs (tune.py, ilp/); the typed result is result.py."""

from planner.search.engine import nothing_fits_line, pareto_front, search
from planner.search.pricer import Estimator, Pricer, oom_reason, usable_capacity_bytes
from planner.search.result import (
    Candidate,
    MappingSummary,
    PartitionSummary,
    PlacementSummary,
    SearchResult,
    SearchStats,
    TuneResult,
)

__all__ = [
    "Candidate", "Estimator", "MappingSummary", "PartitionSummary", "PlacementSummary", "Pricer", "SearchResult",
    "SearchStats", "TuneResult", "nothing_fits_line", "oom_reason", "pareto_front", "search",
    "usable_capacity_bytes",
]
