"""Contiguous layers -> pipeline (virtual) stages, minimising the slowest pipeline rank under
per-rank memory limits (uneven splits fix the vocabulary-layer imbalance, Yeung et al. 2024,
"Balancing Pipeline Parallelism with Vocabulary Parallelism")."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pulp

from planner.search.ilp.solver import SolveInfo, SolveStatus, solve


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
