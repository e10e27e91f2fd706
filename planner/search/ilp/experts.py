"""Expert placement ILP: experts -> EP ranks minimising the slowest rank plus cross-rank and
cross-node traffic (MoETuner, Go et al. 2025; ExFlow, Yao et al. 2024). The exact pairwise model
only proves optimal on small instances, so large ones are solved by layer-pair decomposition
around a local-search incumbent (routing.py; a fixed budget of swap evaluations, so the incumbent
does not depend on the machine's speed) in what is left of a time limit, with the gap reported.
Shares the solver plumbing of planner/ilp.py."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import pulp

from planner.search.ilp import routing as ex
from planner.search.ilp.solver import SolveInfo, SolveStatus, highs_available, solve

_EXACT_MAX_VARIABLES = 6000  # above this the pairwise model does not prove optimal in seconds
# Local-search budget, in [E, E] swap evaluations (about 1 ms each at 256 experts on 8 ranks):
# on the DeepSeek-V3 search's problem (58 layers) one layer converges in 30-50 and the first 16
# take most of the gain (greedy 151.2 s -> 144.9 s at 16 per layer, 143.7 s at convergence).
_SWAPS_PER_LAYER = 16
_EVALUATIONS_PER_LAYER = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertPlacementProblem:
    routing: ex.RoutingStats
    topology: ex.Topology

    def __post_init__(self) -> None:
        if self.routing.num_experts % self.topology.num_ranks:
            raise ValueError(f"ep: {self.topology.num_ranks} ranks must divide num_experts={self.routing.num_experts}")

    @property
    def capacity(self) -> int:
        return self.routing.num_experts // self.topology.num_ranks


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertPlacement:
    ranks: list[list[int]]  # per MoE layer, the EP rank of each expert (Plan.expert_placement)
    cost: ex.PlacementCost
    round_robin: ex.PlacementCost
    method: str  # "exact-ilp" or "local-search+layer-ilp"
    solve: SolveInfo  # objective = cost.total_s; bound = best proven lower bound

    @property
    def all_to_all_saved_s(self) -> float:
        """Predicted routed-token traffic time saved per step over round-robin placement."""
        return self.round_robin.traffic_s - self.cost.traffic_s

    @property
    def saved_s(self) -> float:
        return self.round_robin.total_s - self.cost.total_s


def place_experts(problem: ExpertPlacementProblem, *, time_limit_s: float = 6.0) -> ExpertPlacement:
    """Experts -> EP ranks: greedy + swap local search (fixed budget), then the exact pairwise ILP
    when small, else per-layer ILPs (neighbours fixed) until `time_limit_s`; a combinatorial lower
    bound gives the gap."""
    start = time.perf_counter()
    routing, topo = problem.routing, problem.topology
    deadline = start + time_limit_s
    ranks = ex.local_search(routing, topo, ex.greedy(routing, topo), swaps_per_layer=_SWAPS_PER_LAYER,
                            max_evaluations=_EVALUATIONS_PER_LAYER * routing.num_layers,
                            deadline=start + 0.8 * time_limit_s)
    bound = ex.lower_bound(routing, topo).total_s
    if _pairwise_size(problem) <= _EXACT_MAX_VARIABLES:
        ranks, solver_bound, method, proven = _exact_placement(problem, ranks, deadline - time.perf_counter())
        bound = max(bound, solver_bound)
    else:
        ranks = _layer_ilp_sweep(problem, ranks, deadline)
        method, proven = "local-search+layer-ilp", False
    cost = ex.placement_cost(routing, topo, ranks)
    rr = ex.placement_cost(routing, topo, ex.round_robin(routing.num_layers, routing.num_experts, topo.num_ranks))
    status = SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE
    info = SolveInfo(status=status, objective=cost.total_s, bound=cost.total_s if proven else min(bound, cost.total_s),
                     seconds=time.perf_counter() - start, solver="HiGHS" if highs_available() else "CBC")
    return ExpertPlacement(ranks=ranks.tolist(), cost=cost, round_robin=rr, method=method, solve=info)


def _pairwise_size(p: ExpertPlacementProblem) -> int:
    r = p.routing
    pairs = int((r.affinity > 0).sum())
    return r.num_layers * r.num_experts * p.topology.num_ranks + pairs * p.topology.num_ranks * 2


def _exact_placement(p: ExpertPlacementProblem, start_ranks: np.ndarray,
                     time_limit_s: float) -> tuple[np.ndarray, float, str, bool]:
    r, topo = p.routing, p.topology
    num_l, num_e, num_r = r.num_layers, r.num_experts, topo.num_ranks
    nodes = [list(range(n, min(n + topo.ranks_per_node, num_r))) for n in range(0, num_r, topo.ranks_per_node)]
    prob = pulp.LpProblem("expert_placement", pulp.LpMinimize)
    # -- variables --
    # x[l][e][q] = 1 iff expert e of layer l sits on rank q; busiest[l] >= every rank's tokens;
    # same_rank[l,a,b] (same_node) <= 1 linearise "a and b share a rank (node)" for affinity > 0.
    x = [[[prob.add_variable(f"x_{l}_{e}_{q}", cat=pulp.LpBinary) for q in range(num_r)]
          for e in range(num_e)] for l in range(num_l)]
    busiest = [prob.add_variable(f"busiest_{l}", lowBound=0) for l in range(num_l)]
    pairs = [(l, a, b) for l in range(num_l - 1) for a, b in zip(*np.nonzero(r.affinity[l]))]
    same_rank = {k: [prob.add_variable(f"sr_{k[0]}_{k[1]}_{k[2]}_{q}", 0, 1) for q in range(num_r)] for k in pairs}
    same_node = {k: [prob.add_variable(f"sn_{k[0]}_{k[1]}_{k[2]}_{n}", 0, 1) for n in range(len(nodes))] for k in pairs}
    # -- objective --
    # sum_l c * busiest_l + (1/R) sum_{l,a,b} A_lab [intra (1 - sum_q sr_abq) + (inter - intra)(1 - sum_n sn_abn)]
    extra = topo.inter_s_per_token - topo.intra_s_per_token
    prob += topo.compute_s_per_token * pulp.lpSum(busiest) + pulp.lpSum(
        r.affinity[k] / num_r * (topo.intra_s_per_token * (1 - pulp.lpSum(same_rank[k]))
                                 + extra * (1 - pulp.lpSum(same_node[k]))) for k in pairs)
    # -- constraints --
    for l, e in itertools.product(range(num_l), range(num_e)):
        prob += pulp.lpSum(x[l][e]) == 1, f"one_rank_{l}_{e}"
    for l, q in itertools.product(range(num_l), range(num_r)):
        prob += pulp.lpSum(x[l][e][q] for e in range(num_e)) == p.capacity, f"capacity_{l}_{q}"
        prob += pulp.lpSum(r.expert_tokens[l, e] * x[l][e][q] for e in range(num_e)) <= busiest[l], f"load_{l}_{q}"
    for (l, a, b) in pairs:  # sr <= x[l][a][q], sr <= x[l+1][b][q]; same for node sums
        for q in range(num_r):
            prob += same_rank[(l, a, b)][q] <= x[l][a][q], f"sr_a_{l}_{a}_{b}_{q}"
            prob += same_rank[(l, a, b)][q] <= x[l + 1][b][q], f"sr_b_{l}_{a}_{b}_{q}"
        for n, members in enumerate(nodes):
            prob += same_node[(l, a, b)][n] <= pulp.lpSum(x[l][a][q] for q in members), f"sn_a_{l}_{a}_{b}_{n}"
            prob += same_node[(l, a, b)][n] <= pulp.lpSum(x[l + 1][b][q] for q in members), f"sn_b_{l}_{a}_{b}_{n}"
    for l, e in itertools.product(range(num_l), range(num_e)):  # warm start from local search
        for q in range(num_r):
            x[l][e][q].setInitialValue(int(start_ranks[l, e] == q))
    info = solve(prob, time_limit_s=max(time_limit_s, 0.5))
    if info.status == SolveStatus.INFEASIBLE:
        return start_ranks, 0.0, "local-search", False
    ranks = np.array([[max(range(num_r), key=lambda q: x[l][e][q].varValue) for e in range(num_e)]
                      for l in range(num_l)])
    return ranks, info.bound, "exact-ilp", info.status == SolveStatus.OPTIMAL


def _layer_ilp_sweep(p: ExpertPlacementProblem, ranks: np.ndarray, deadline: float) -> np.ndarray:
    """Re-solve one layer at a time with its neighbours fixed (layer-pair decomposition); each
    expert may move to its 6 cheapest ranks or stay. Stops at the deadline."""
    ranks = ranks.copy()
    for layer in range(p.routing.num_layers):
        if time.perf_counter() > deadline - 0.2:
            break
        trial = _layer_ilp(p, ranks, layer, deadline - time.perf_counter())
        if _layer_cost(p, ranks, layer, trial) < _layer_cost(p, ranks, layer, ranks[layer]):
            ranks[layer] = trial
    return ranks


def _layer_cost(p: ExpertPlacementProblem, ranks: np.ndarray, layer: int, own: np.ndarray) -> float:
    """The part of the objective that one layer's placement changes (neighbours fixed)."""
    traffic = ex.neighbour_cost(p.routing, p.topology, ranks, layer)[np.arange(own.size), own].sum()
    load = np.bincount(own, weights=p.routing.expert_tokens[layer], minlength=p.topology.num_ranks).max()
    return float(traffic + load * p.topology.compute_s_per_token)


def _layer_ilp(p: ExpertPlacementProblem, ranks: np.ndarray, layer: int, time_limit_s: float) -> np.ndarray:
    topo, tokens = p.topology, p.routing.expert_tokens[layer]
    cost = ex.neighbour_cost(p.routing, topo, ranks, layer)
    num_e, num_r = cost.shape
    allowed = [sorted({int(ranks[layer, e]), *np.argsort(cost[e])[:6].tolist()}) for e in range(num_e)]
    prob = pulp.LpProblem(f"expert_layer_{layer}", pulp.LpMinimize)
    # -- variables -- x[e][q] = 1 iff expert e moves to (or stays on) allowed rank q
    x = {(e, q): prob.add_variable(f"x_{e}_{q}", cat=pulp.LpBinary) for e in range(num_e) for q in allowed[e]}
    busiest = prob.add_variable("busiest", lowBound=float(tokens.sum() / num_r))
    # -- objective -- c * busiest + sum_{e,q} G[e,q] x[e][q] (G = traffic to fixed neighbours)
    prob += topo.compute_s_per_token * busiest + pulp.lpSum(float(cost[e, q]) * v for (e, q), v in x.items())
    # -- constraints -- one rank per expert; cap experts and <= busiest tokens per rank
    for e in range(num_e):
        prob += pulp.lpSum(x[e, q] for q in allowed[e]) == 1, f"one_rank_{e}"
    for q in range(num_r):
        mine = [(e, v) for (e, qq), v in x.items() if qq == q]
        prob += pulp.lpSum(v for _, v in mine) == p.capacity, f"capacity_{q}"
        prob += pulp.lpSum(float(tokens[e]) * v for e, v in mine) <= busiest, f"load_{q}"
    for (e, q), v in x.items():
        v.setInitialValue(int(ranks[layer, e] == q))
    busiest.setInitialValue(max(float(np.bincount(ranks[layer], weights=tokens, minlength=num_r).max()), busiest.lowBound))
    info = solve(prob, time_limit_s=max(0.05, min(time_limit_s, 1.0)), gap_rel=1e-3, presolve=False)
    if info.status == SolveStatus.INFEASIBLE:
        return ranks[layer]
    return np.array([next(q for q in allowed[e] if x[e, q].varValue > 0.5) for e in range(num_e)])

