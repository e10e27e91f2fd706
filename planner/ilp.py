"""Integer programs of the planner (pulp + HiGHS; CBC only when highspy is missing).

Three problems, each a frozen input dataclass and a frozen output dataclass, each model laid
out variables -> objective -> constraints with the math in comments:

1. `partition_stages`: contiguous layers -> pipeline (virtual) stages, minimising the slowest
   pipeline rank under per-rank memory limits (uneven splits fix the vocabulary-layer imbalance,
   Yeung et al. 2024, "Balancing Pipeline Parallelism with Vocabulary Parallelism").
2. `place_experts`: experts -> EP ranks (MoETuner, Go et al. 2025; ExFlow, Yao et al. 2024);
   the pairwise model is hard, so it is solved by layer-pair decomposition around a local-search
   incumbent (planner/experts.py) with a time limit and a reported optimality gap.
3. `ilp_devices.map_devices` (its own module for size): logical nodes -> physical nodes.

PLATFORM.md pitfall handled in `solve`: at a time limit pulp's LpStatus still says "Optimal";
the proof status comes from prob.sol_status and HiGHS's mip_dual_bound.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pulp

from planner import experts as ex

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


def _highs_available() -> bool:
    return "HiGHS" in pulp.listSolvers(onlyAvailable=True)


class _WarmHiGHS(pulp.HiGHS):
    """pulp.HiGHS plus a MIP start from the variables' initial values (pulp's HiGHS has none)."""

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
    if _highs_available():
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


@dataclass(frozen=True, slots=True, kw_only=True)
class StagePartitionProblem:
    """Layers in model order (embedding, blocks..., head) and what each costs on a stage.

    Chunk c (of pp * virtual_stages) runs on pipeline rank c % pp (Megatron's interleaving).
    A rank's memory is sum over its layers of static + activation * rank_inflight[rank], where
    rank_inflight is the number of micro-batches whose activations the rank keeps (1F1B: pp - r).
    Step time follows Narayanan et al. 2021: m micro-batches keep the slowest rank busy for
    m * T_rank, and warm-up plus cool-down add (pp - 1) of the slowest chunk, T_chunk.
    """

    layer_time_s: tuple[float, ...]  # forward + backward of one micro-batch
    layer_static_bytes: tuple[float, ...]
    layer_activation_bytes: tuple[float, ...]
    num_ranks: int
    virtual_stages: int = 1
    num_micro_batches: int = 1
    rank_inflight: tuple[float, ...]
    memory_limit_bytes: float
    window: int | None = None  # if set, a layer stays within +-window chunks of the even split

    def __post_init__(self) -> None:
        n = len(self.layer_time_s)
        assert len(self.layer_static_bytes) == n == len(self.layer_activation_bytes)
        assert len(self.rank_inflight) == self.num_ranks
        if n < self.num_chunks:
            raise ValueError(f"pp*virtual_stages: {self.num_chunks} stages need at least as many layers, got {n}")

    @property
    def num_chunks(self) -> int:
        return self.num_ranks * self.virtual_stages

    def rank_of(self, chunk: int) -> int:
        return chunk % self.num_ranks

    def step_time_s(self, slowest_rank_s: float, slowest_chunk_s: float) -> float:
        return self.num_micro_batches * slowest_rank_s + (self.num_ranks - 1) * slowest_chunk_s

    def evaluate(self, layers_per_chunk: list[int]) -> tuple[float, float, list[float]]:
        """(step time, slowest rank time, memory per rank) of a partition (tests, warm starts)."""
        bounds = np.cumsum([0, *layers_per_chunk])
        times = np.asarray(self.layer_time_s)
        chunk_time = np.array([times[bounds[c]:bounds[c + 1]].sum() for c in range(self.num_chunks)])
        rank_time, rank_mem = np.zeros(self.num_ranks), np.zeros(self.num_ranks)
        for c in range(self.num_chunks):
            r, lo, hi = self.rank_of(c), bounds[c], bounds[c + 1]
            rank_time[r] += chunk_time[c]
            rank_mem[r] += sum(self.layer_static_bytes[lo:hi]) + self.rank_inflight[r] * sum(
                self.layer_activation_bytes[lo:hi])
        step = self.step_time_s(float(rank_time.max()), float(chunk_time.max()))
        return step, float(rank_time.max()), rank_mem.tolist()


@dataclass(frozen=True, slots=True, kw_only=True)
class StagePartition:
    layers_per_chunk: list[int]  # in chunk (schedule) order
    step_time_s: float
    slowest_rank_s: float
    rank_memory_bytes: list[float]
    solve: SolveInfo


def partition_stages(problem: StagePartitionProblem, *, time_limit_s: float = 10.0) -> StagePartition | None:
    """Optimal contiguous partition, or None when no partition fits the memory limit."""
    prob, y, t_rank, t_chunk = _partition_model(problem)
    _partition_warm_start(problem, y, t_rank, t_chunk)
    # HiGHS presolve costs ~1 s on this model and buys nothing: the DP cut and the warm
    # start usually close the gap at the root.
    info = solve(prob, time_limit_s=time_limit_s, presolve=False)
    if info.status == SolveStatus.INFEASIBLE:
        return None
    n, last = len(problem.layer_time_s), problem.num_chunks - 1
    # layers in chunks <= c = sum_i y[i][c]; the last column is all ones.
    at_most = [sum(round(pulp.value(y[i][c])) for i in range(n)) for c in range(last)] + [n]
    counts = [at_most[0]] + [at_most[c] - at_most[c - 1] for c in range(1, last + 1)]
    step, slowest, memory = problem.evaluate(counts)
    return StagePartition(layers_per_chunk=counts, step_time_s=step, slowest_rank_s=slowest,
                          rank_memory_bytes=memory, solve=info)


def _partition_model(p: StagePartitionProblem) -> tuple[pulp.LpProblem, list[list], pulp.LpVariable, pulp.LpVariable]:
    n, chunks, times = len(p.layer_time_s), p.num_chunks, p.layer_time_s
    prob = pulp.LpProblem("stage_partition", pulp.LpMinimize)
    # -- variables --
    # y[i][c] = 1 iff layer i sits in a chunk <= c (cumulative form: contiguity becomes two
    # monotonicity conditions, no big-M). x[i][c] = y[i][c] - y[i][c-1]; y[i][last] = 1.
    lo, hi = _chunk_window(p)
    y = [[0 if c < lo[i] else 1 if c >= hi[i] else prob.add_variable(f"y_{i}_{c}", cat=pulp.LpBinary)
          for c in range(chunks - 1)] + [1] for i in range(n)]
    # Valid lower bounds: T_chunk >= the min-max chunk time with each chunk fitting alone (DP),
    # T_rank >= max(total / pp, T_chunk bound when vp = 1).
    chunk_lb = _min_max_contiguous(p)[0]
    chunk_lb = chunk_lb * (1 - 1e-9) if np.isfinite(chunk_lb) else 0.0  # float slack for the warm start
    t_chunk = prob.add_variable("slowest_chunk_s", lowBound=chunk_lb)
    rank_lb = max(sum(times) / p.num_ranks * (1 - 1e-9), chunk_lb if p.virtual_stages == 1 else 0.0)
    t_rank = t_chunk if p.virtual_stages == 1 else prob.add_variable("slowest_rank_s", lowBound=rank_lb)

    def x(i: int, c: int) -> pulp.LpAffineExpression:
        return y[i][c] - (y[i][c - 1] if c else 0)

    # -- objective --  min m * T_rank + (pp - 1) * T_chunk
    prob += p.num_micro_batches * t_rank + (p.num_ranks - 1) * t_chunk
    # -- constraints --
    for i, c in itertools.product(range(n), range(chunks - 1)):
        if c + 1 < chunks - 1 and _free(y[i][c], y[i][c + 1]):
            prob += y[i][c] <= y[i][c + 1], f"cumulative_{i}_{c}"  # y nondecreasing in c
        if i + 1 < n and _free(y[i + 1][c], y[i][c]):
            prob += y[i + 1][c] <= y[i][c], f"contiguous_{i}_{c}"  # later layers never earlier
    if chunks > 1 and _free(y[0][0]):
        prob += y[0][0] == 1, "embedding_on_first_chunk"
    if chunks > 1 and _free(y[n - 1][chunks - 2]):
        prob += y[n - 1][chunks - 2] == 0, "head_on_last_chunk"
    for c in range(chunks):
        # every chunk holds >= 1 layer; its time sum_i t_i x[i][c] <= T_chunk
        prob += pulp.lpSum(x(i, c) for i in range(n)) >= 1, f"nonempty_{c}"
        if p.virtual_stages > 1:
            prob += pulp.lpSum(times[i] * x(i, c) for i in range(n)) <= t_chunk, f"chunk_time_{c}"
    for r in range(p.num_ranks):
        mine = [c for c in range(chunks) if p.rank_of(c) == r]
        # rank time: sum_{c on r} sum_i t_i x[i][c] <= T_rank
        prob += pulp.lpSum(times[i] * x(i, c) for c in mine for i in range(n)) <= t_rank, f"rank_time_{r}"
        # rank memory: sum_{c on r} sum_i (static_i + inflight_r * act_i) x[i][c] <= M
        per_layer = [p.layer_static_bytes[i] + p.rank_inflight[r] * p.layer_activation_bytes[i] for i in range(n)]
        prob += pulp.lpSum(per_layer[i] * x(i, c) for c in mine for i in range(n)) <= p.memory_limit_bytes, f"memory_{r}"
    return prob, y, t_rank, t_chunk


def _free(*terms: object) -> bool:
    return any(isinstance(t, pulp.LpVariable) for t in terms)


def _chunk_window(p: StagePartitionProblem) -> tuple[list[int], list[int]]:
    """Chunks layer i may use: all, or +-window around its chunk in the even split."""
    n, chunks = len(p.layer_time_s), p.num_chunks
    if p.window is None:
        return [0] * n, [chunks - 1] * n
    home = np.repeat(np.arange(chunks), [n // chunks + (c < n % chunks) for c in range(chunks)])
    return (np.maximum(home - p.window, 0).tolist(), np.minimum(home + p.window, chunks - 1).tolist())


def _partition_warm_start(p: StagePartitionProblem, y: list[list], t_rank: pulp.LpVariable,
                          t_chunk: pulp.LpVariable) -> None:
    """Seed the solver with the min-max chunk split (DP) when its ranks fit in memory."""
    counts = _min_max_contiguous(p)[1]
    if not counts:
        return
    _, slowest_rank, memory = p.evaluate(counts)
    if max(memory) > p.memory_limit_bytes:
        return
    cumulative = np.cumsum(counts)
    lo, hi = _chunk_window(p)
    chunk_of = np.searchsorted(cumulative, np.arange(len(y)), side="right")
    if np.any(chunk_of < lo) or np.any(chunk_of > hi):
        return  # the DP split leaves the window
    for i, row in enumerate(y):
        for c, var in enumerate(row[:-1]):
            if isinstance(var, pulp.LpVariable):
                var.setInitialValue(1 if i < cumulative[c] else 0)
    bounds = np.cumsum([0, *counts])
    t_chunk.setInitialValue(max(sum(p.layer_time_s[bounds[c]:bounds[c + 1]]) for c in range(p.num_chunks)))
    t_rank.setInitialValue(slowest_rank)


def _min_max_contiguous(p: StagePartitionProblem) -> tuple[float, list[int]]:
    """Exact min over contiguous splits into non-empty chunks of the slowest chunk, where each
    chunk alone must fit its rank's memory (a relaxation when virtual_stages > 1, exact for 1).

    best_c[j] = min_{i < j} max(best_{c-1}[i], P[j] - P[i]) over prefix sums P, with pieces that
    do not fit set to +inf; O(chunks * n^2) in numpy, a few ms for 130 layers x 16 stages.
    Returns (inf, []) when no split fits.
    """
    n = len(p.layer_time_s)
    prefix = np.concatenate([[0.0], np.cumsum(p.layer_time_s)])
    static = np.concatenate([[0.0], np.cumsum(p.layer_static_bytes)])
    act = np.concatenate([[0.0], np.cumsum(p.layer_activation_bytes)])
    piece = prefix[None, :] - prefix[:, None]  # piece[i, j] = time of layers i..j-1
    piece[np.tril_indices(n + 1)] = np.inf  # pieces must be non-empty

    def fitting(chunk: int) -> np.ndarray:
        inflight = p.rank_inflight[p.rank_of(chunk)]
        memory = (static[None, :] - static[:, None]) + inflight * (act[None, :] - act[:, None])
        return np.where(memory <= p.memory_limit_bytes, piece, np.inf)

    best = fitting(0)[0].copy()
    choice = []
    for chunk in range(1, p.num_chunks):
        candidates = np.maximum(best[:, None], fitting(chunk))  # [i, j]
        arg = candidates.argmin(axis=0)
        best = candidates[arg, np.arange(n + 1)]
        choice.append(arg)
    if not np.isfinite(best[n]):
        return float("inf"), []
    counts, j = [], n
    for arg in reversed(choice):
        i = int(arg[j])
        counts.append(j - i)
        j = i
    counts.append(j)
    return float(best[n]), counts[::-1]


# ---------------------------------------------------------------------------------------------
# 2. Expert placement
# ---------------------------------------------------------------------------------------------

_EXACT_MAX_VARIABLES = 6000  # above this the pairwise model does not prove optimal in seconds


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
    """Experts -> EP ranks: exact pairwise ILP when small, else greedy + swap local search +
    per-layer ILP (neighbours fixed) within `time_limit_s`, with a combinatorial lower bound."""
    start = time.perf_counter()
    routing, topo = problem.routing, problem.topology
    deadline = start + time_limit_s
    ranks = ex.local_search(routing, topo, ex.greedy(routing, topo), deadline=start + 0.4 * time_limit_s)
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
                     seconds=time.perf_counter() - start, solver="HiGHS" if _highs_available() else "CBC")
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

