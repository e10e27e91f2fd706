"""Contiguous layers -> pipeline (virtual) stages, minimising the slowest pipeline rank under
per-rank memory limits (uneven splits fix the vocabulary-layer imbalance, Yeung et al. 2024,
"Balancing Pipeline Parallelism with Vocabulary Parallelism")."""

from __future__ import annotations

import time
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
    """Optimal contiguous partition, or None when no partition fits the memory limit.

    With one chunk per rank the step is (m + pp - 1) x the slowest chunk, so the min-max DP
    (_min_max_contiguous) is already the exact optimum: no solver. Otherwise the ILP below, with
    the DP's slowest chunk as a bound and its split as the warm start."""
    start = time.perf_counter()
    slowest_chunk, split = _min_max_contiguous(problem)
    if problem.virtual_stages == 1:
        if not split:
            return None
        step = problem.evaluate(split)[0]
        info = SolveInfo(status=SolveStatus.OPTIMAL, objective=step, bound=step,
                         seconds=time.perf_counter() - start, solver="dp")
        return _partition(problem, split, info)
    model = _partition_model(problem, slowest_chunk)
    _partition_warm_start(problem, model, split)
    info = solve(model.prob, time_limit_s=time_limit_s, presolve=True)
    if info.status == SolveStatus.INFEASIBLE:
        return None
    return _partition(problem, model.counts(), info)


def _partition(problem: StagePartitionProblem, counts: list[int], info: SolveInfo) -> StagePartition:
    step, slowest, memory = problem.evaluate(counts)
    return StagePartition(layers_per_chunk=counts, step_time_s=step, slowest_rank_s=slowest,
                          rank_memory_bytes=memory, solve=info)


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive layers with equal time, static and activation bytes (a transformer's blocks):
    the ILP counts how many of them each chunk takes instead of placing each one."""

    first: int
    length: int
    time_s: float
    static_bytes: float
    activation_bytes: float


def _runs(p: StagePartitionProblem) -> list[_Run]:
    rows = list(zip(p.layer_time_s, p.layer_static_bytes, p.layer_activation_bytes))
    runs: list[_Run] = []
    for i, row in enumerate(rows):
        if runs and rows[runs[-1].first] == row:
            runs[-1] = _Run(runs[-1].first, runs[-1].length + 1, *row)
        else:
            runs.append(_Run(i, 1, *row))
    return runs


@dataclass(slots=True)
class _Model:
    prob: pulp.LpProblem
    runs: list[_Run]
    taken: list[list]  # taken[c][r]: layers of run r in chunks <= c (int or LpVariable)
    done: list[list]  # done[c][r] = 1 iff run r is complete by chunk c (r < last run)
    t_rank: pulp.LpVariable
    t_chunk: pulp.LpVariable

    def counts(self) -> list[int]:
        at_most = [sum(round(pulp.value(v)) for v in row) for row in self.taken]
        return [at_most[0]] + [at_most[c] - at_most[c - 1] for c in range(1, len(at_most))]

    def took(self, c: int, r: int) -> pulp.LpAffineExpression:
        """Layers of run r in chunk c."""
        return self.taken[c][r] - (self.taken[c - 1][r] if c else 0)


def _partition_model(p: StagePartitionProblem, slowest_chunk_s: float) -> _Model:
    """Integer model over runs of equal layers (Megatron-style blocks: three runs, embedding,
    blocks, head), so its size follows the number of distinct runs, not of layers, and its LP
    relaxation is the fractional even split; a model with every layer distinct is the classic
    per-layer assignment. Interleaved schedules only (virtual_stages > 1; one chunk per rank is
    the DP's). `slowest_chunk_s`: the DP's min-max chunk, a valid lower bound on T_chunk."""
    runs, last = _runs(p), p.num_chunks - 1
    prob = pulp.LpProblem("stage_partition", pulp.LpMinimize)
    # -- variables --
    # taken[c][r] in [0, L_r], nondecreasing in c, all of run r by the last chunk;
    # done[c][r] binary: run r complete by chunk c, the gate for run r + 1.
    taken = [[prob.add_variable(f"taken_{c}_{r}", lowBound=0, upBound=run.length,
                                cat=pulp.LpBinary if run.length == 1 else pulp.LpInteger)
              for r, run in enumerate(runs)] for c in range(last)] + [[run.length for run in runs]]
    done = [[prob.add_variable(f"done_{c}_{r}", cat=pulp.LpBinary) for r in range(len(runs) - 1)]
            for c in range(last)]
    # Valid lower bounds: T_chunk >= the DP's min-max chunk, T_rank >= total / pp.
    chunk_lb = slowest_chunk_s * (1 - 1e-9) if np.isfinite(slowest_chunk_s) else 0.0  # float slack for the warm start
    t_chunk = prob.add_variable("slowest_chunk_s", lowBound=chunk_lb)
    t_rank = prob.add_variable("slowest_rank_s", lowBound=sum(p.layer_time_s) / p.num_ranks * (1 - 1e-9))
    model = _Model(prob, runs, taken, done, t_rank, t_chunk)
    # -- objective --  min m * T_rank + (pp - 1) * T_chunk
    prob += p.num_micro_batches * t_rank + (p.num_ranks - 1) * t_chunk
    # -- constraints --
    _contiguity(p, model)
    for c in range(p.num_chunks):
        # every chunk holds >= 1 layer; its time <= T_chunk
        prob += pulp.lpSum(model.took(c, r) for r in range(len(runs))) >= 1, f"nonempty_{c}"
        prob += pulp.lpSum(run.time_s * model.took(c, r) for r, run in enumerate(runs)) <= t_chunk, f"chunk_time_{c}"
    for rank in range(p.num_ranks):
        mine = [(c, r, run) for c in range(rank, p.num_chunks, p.num_ranks) for r, run in enumerate(runs)]
        prob += pulp.lpSum(run.time_s * model.took(c, r) for c, r, run in mine) <= t_rank, f"rank_time_{rank}"
        # the rank's layer count as its own integer: branching on it splits the rank-time
        # symmetry of chunks on one rank that the per-chunk counts leave open
        held = prob.add_variable(f"rank_layers_{rank}", lowBound=0, upBound=len(p.layer_time_s), cat=pulp.LpInteger)
        prob += held == pulp.lpSum(model.took(c, r) for c, r, _ in mine), f"rank_layers_{rank}"
        inflight = p.rank_inflight[rank]
        prob += pulp.lpSum((run.static_bytes + inflight * run.activation_bytes) * model.took(c, r)
                           for c, r, run in mine) <= p.memory_limit_bytes, f"memory_{rank}"
    return model


def _contiguity(p: StagePartitionProblem, model: _Model) -> None:
    """Cumulative counts never decrease, a run starts only once the one before it is complete,
    and the layers in chunks <= c stay inside the window's bounds."""
    prob, runs, taken, done = model.prob, model.runs, model.taken, model.done
    at_least, at_most = _window_bounds(p)
    for c in range(p.num_chunks - 1):
        for r, run in enumerate(runs):
            prob += taken[c][r] <= taken[c + 1][r], f"cumulative_{c}_{r}"
            if r + 1 < len(runs):
                prob += taken[c][r] >= run.length * done[c][r], f"complete_{c}_{r}"
                prob += taken[c][r + 1] <= runs[r + 1].length * done[c][r], f"after_{c}_{r}"
        total = pulp.lpSum(taken[c])
        if at_least[c] > 0:
            prob += total >= at_least[c], f"window_low_{c}"
        if at_most[c] < len(p.layer_time_s):
            prob += total <= at_most[c], f"window_high_{c}"


def _window_bounds(p: StagePartitionProblem) -> tuple[list[int], list[int]]:
    """Bounds on the layers in chunks <= c that keep every layer within +-window chunks of its
    chunk in the even split (layer i sits in chunk <= c iff i < that count)."""
    n, chunks = len(p.layer_time_s), p.num_chunks
    if p.window is None:
        return [0] * chunks, [n] * chunks
    home = np.repeat(np.arange(chunks), [n // chunks + (c < n % chunks) for c in range(chunks)])
    lo, hi = home - p.window, home + p.window  # both nondecreasing in i
    at_least = [int(np.count_nonzero(hi <= c)) for c in range(chunks)]
    at_most = [int(np.count_nonzero(lo <= c)) for c in range(chunks)]
    return at_least, at_most


def _partition_warm_start(p: StagePartitionProblem, model: _Model, split: list[int]) -> None:
    """Seed the solver with the min-max chunk split (the DP's, inside the window) when its ranks
    fit in memory."""
    if not split:
        return
    _, slowest_rank, memory = p.evaluate(split)
    if max(memory) > p.memory_limit_bytes:
        return
    cumulative = np.cumsum(split)
    for c, row in enumerate(model.taken[:-1]):
        for r, run in enumerate(model.runs):
            got = int(min(max(cumulative[c] - run.first, 0), run.length))
            row[r].setInitialValue(got)
            if r + 1 < len(model.runs):
                model.done[c][r].setInitialValue(int(got == run.length))
    bounds = np.cumsum([0, *split])
    model.t_chunk.setInitialValue(max(sum(p.layer_time_s[bounds[c]:bounds[c + 1]]) for c in range(p.num_chunks)))
    model.t_rank.setInitialValue(slowest_rank)


def _min_max_contiguous(p: StagePartitionProblem) -> tuple[float, list[int]]:
    """Exact min over contiguous splits into non-empty chunks of the slowest chunk, where each
    chunk alone must fit its rank's memory and every layer stays in its window (a relaxation when
    virtual_stages > 1, exact for 1).

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

    at_least, at_most = _window_bounds(p)
    ends = np.arange(n + 1)

    def in_window(chunk: int, best: np.ndarray) -> np.ndarray:  # best[j]: j layers in chunks <= chunk
        return np.where((ends >= at_least[chunk]) & (ends <= at_most[chunk]), best, np.inf)

    best = in_window(0, fitting(0)[0])
    choice = []
    for chunk in range(1, p.num_chunks):
        candidates = np.maximum(best[:, None], fitting(chunk))  # [i, j]
        arg = candidates.argmin(axis=0)
        best = in_window(chunk, candidates[arg, ends])
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
