"""Solver plumbing shared by the planner's integer programs (pulp + HiGHS; CBC only when highspy is missing).

Each problem (stages.py, experts.py, devices.py) is a frozen input dataclass and a frozen output
dataclass, each model laid out variables -> objective -> constraints with the math in comments.

PLATFORM.md pitfall handled in `solve`: at a time limit pulp's LpStatus still says "Optimal";
the proof status comes from prob.sol_status and HiGHS's mip_dual_bound.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pulp


_EPS = 1e-9


class SolveStatus(StrEnum):
    OPTIMAL = "optimal"  # proven within the solver's gap tolerance
    FEASIBLE = "feasible"  # stopped at the time limit with an incumbent
    HEURISTIC = "heuristic"  # the solver found nothing better than the warm start
    INFEASIBLE = "infeasible"


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveInfo:
    """How a solve ended; `bound` is a proven lower bound on the (minimised) objective."""

    status: SolveStatus
    objective: float
    bound: float
    seconds: float
    solver: str

    @property
    def gap(self) -> float:
        """Relative optimality gap (objective - bound) / objective; 0 when proven optimal."""
        if self.objective <= _EPS:
            return 0.0
        return max(0.0, (self.objective - self.bound) / self.objective)


def highs_available() -> bool:
    return "HiGHS" in pulp.listSolvers(onlyAvailable=True)


@contextmanager
def _stdout_to_devnull():
    """Point file descriptor 1 at /dev/null: HiGHS's C++ constructor prints its banner there
    before any option (output_flag) can be set, and `planner search --json` owns stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class _WarmHiGHS(pulp.HiGHS):
    """pulp.HiGHS plus a MIP start from the variables' initial values (pulp's HiGHS has none),
    and silent: no banner on stdout (msg=False only sets output_flag after the banner)."""

    def createAndConfigureSolver(self, lp: pulp.LpProblem) -> None:
        with _stdout_to_devnull():
            super().createAndConfigureSolver(lp)

    def callSolver(self, lp: pulp.LpProblem) -> None:
        import highspy

        values = [v.varValue for v in lp.variables()]
        if all(v is not None for v in values):
            start = highspy.HighsSolution()
            start.col_value = [float(v) for v in values]
            start.value_valid = True
            lp.solverModel.setSolution(start)
        lp.solverModel.run()


def solve(prob: pulp.LpProblem, *, time_limit_s: float, gap_rel: float = 1e-6, presolve: bool = True) -> SolveInfo:
    """Solve with HiGHS (CBC fallback) and read the proof status and dual bound honestly."""
    start = time.perf_counter()
    if highs_available():
        solver = _WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap_rel, threads=1,
                            presolve="on" if presolve else "off")
    else:
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel, warmStart=True)
    prob.solve(solver)
    seconds = time.perf_counter() - start
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return SolveInfo(status=SolveStatus.INFEASIBLE, objective=float("inf"), bound=float("inf"),
                         seconds=seconds, solver=solver.name)
    objective = float(pulp.value(prob.objective))
    proven = prob.sol_status == pulp.LpSolutionOptimal
    bound = objective if proven else _dual_bound(prob, objective)
    status = SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE
    return SolveInfo(status=status, objective=objective, bound=min(bound, objective),
                     seconds=seconds, solver=solver.name)


def _dual_bound(prob: pulp.LpProblem, objective: float) -> float:
    model = getattr(prob, "solverModel", None)
    if model is None:
        return 0.0  # CBC through pulp exposes no bound: report the trivial one
    bound = float(model.getInfo().mip_dual_bound)
    return bound if np.isfinite(bound) else 0.0


# ---------------------------------------------------------------------------------------------
# 1. Stage partition
# ---------------------------------------------------------------------------------------------
