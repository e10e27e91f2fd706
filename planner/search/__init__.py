"""Search: enumerate layouts (space.py), price them with cost/ (engine.py), refine the best with
the ILPs (tune.py)."""

from planner.search.engine import Candidate, SearchResult, SearchStats, nothing_fits_line, oom_reason, pareto_front, search

__all__ = ["Candidate", "SearchResult", "SearchStats", "nothing_fits_line", "oom_reason", "pareto_front", "search"]
