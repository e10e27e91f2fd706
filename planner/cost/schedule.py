"""Pipeline schedules: task order per stage, an event-driven simulator, and exact closed forms.

The simulator is one heap loop over "task finished" events; each stage runs its task list in
the schedule's order, a task starting once the stage is free and its producer (previous
chunk's forward, next chunk's backward) has finished and its activations crossed the link.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import StrEnum

from planner.graph import Layer, LayerKind, ModelGraph
from planner.plan import Plan, Schedule


class Pass(StrEnum):
    F = "forward"
    B = "backward"  # input gradient (and weight gradient unless split out)
    W = "weight"  # weight gradient, deferred by zero-bubble schedules


@dataclass(frozen=True, slots=True)
class Task:
    kind: Pass
    micro_batch: int
    chunk: int  # model chunk (virtual stage) index: chunk c runs on stage c % pp


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkTimes:
    """Seconds of one micro-batch through one model chunk (communication already included)."""

    fwd_s: float
    bwd_s: float  # backward incl. recompute and weight gradient
    weight_s: float = 0.0  # the weight-gradient share of bwd_s (zero-bubble splits it out)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineResult:
    makespan_s: float
    busy_s: float  # compute time of the busiest stage (what a bubble-free pipeline would take)
    timeline: list[dict] | None = None

    @property
    def bubble_fraction(self) -> float:
        return max(0.0, 1.0 - self.busy_s / self.makespan_s) if self.makespan_s > 0 else 0.0


def chunk_layers(graph: ModelGraph, plan: Plan) -> list[list[Layer]]:
    """Layers of each model chunk: blocks per plan.stage_blocks, embedding first, head last."""
    blocks = graph.blocks
    sizes = plan.stage_blocks(len(blocks))
    chunks, start = [], 0
    for size in sizes:
        chunks.append(list(blocks[start:start + size]))
        start += size
    chunks[0] = [layer for layer in graph.layers if layer.kind == LayerKind.EMBEDDING] + chunks[0]
    chunks[-1] = chunks[-1] + [layer for layer in graph.layers if layer.kind == LayerKind.HEAD]
    return chunks


def stage_tasks(plan: Plan, *, stage: int, num_micro_batches: int) -> list[Task]:
    """The order a stage runs its tasks in (Megatron's schedules; Qi et al. 2023 ZB-H1)."""
    p, v, m = plan.dims.pp, plan.virtual_stages, num_micro_batches
    fwd = [Task(Pass.F, mb, c * p + stage) for mb, c in _chunk_order(m, p, v, reverse=False)]
    bwd = [Task(Pass.B, mb, c * p + stage) for mb, c in _chunk_order(m, p, v, reverse=True)]
    match plan.schedule:
        case Schedule.GPIPE:
            return fwd + bwd
        case Schedule.ONE_F_ONE_B | Schedule.INTERLEAVED_1F1B:
            warmup = min(len(fwd), (p - stage - 1) * 2 + (v - 1) * p if v > 1 else p - stage - 1)
            return _one_f_one_b(fwd, bwd, warmup)
        case Schedule.ZERO_BUBBLE:  # W tasks are issued dynamically by the simulator
            return _one_f_one_b(fwd, bwd, min(m, p - stage - 1))


def _chunk_order(m: int, p: int, v: int, *, reverse: bool) -> list[tuple[int, int]]:
    """(micro-batch, local chunk) pairs: groups of p micro-batches sweep the chunks in turn."""
    order = []
    for group in range(0, m, p):
        mbs = range(group, min(group + p, m))
        chunks = range(v - 1, -1, -1) if reverse else range(v)
        order += [(mb, c) for c in chunks for mb in mbs]
    return order


def _one_f_one_b(fwd: list[Task], bwd: list[Task], warmup: int) -> list[Task]:
    tasks = fwd[:warmup]
    for i, f in enumerate(fwd[warmup:]):
        tasks += [f, bwd[i]]
    return tasks + bwd[len(fwd) - warmup:]


def _duration(task: Task, times: list[ChunkTimes], *, split_weight: bool) -> float:
    t = times[task.chunk]
    match task.kind:
        case Pass.F:
            return t.fwd_s
        case Pass.B:
            return t.bwd_s - t.weight_s if split_weight else t.bwd_s
        case Pass.W:
            return t.weight_s


def _producer(task: Task, num_chunks: int) -> tuple[Pass, int, int] | None:
    """The (kind, micro-batch, chunk) of the task whose output this one consumes across a stage
    boundary (None for own-stage deps); a plain tuple, the simulator's `done` key (hashing a
    tuple is several times cheaper than a dataclass, and the loop asks ~10^4 times per plan)."""
    match task.kind:
        case Pass.F:
            return (Pass.F, task.micro_batch, task.chunk - 1) if task.chunk > 0 else None
        case Pass.B:
            if task.chunk == num_chunks - 1:
                return (Pass.F, task.micro_batch, task.chunk)
            return (Pass.B, task.micro_batch, task.chunk + 1)
        case Pass.W:
            return (Pass.B, task.micro_batch, task.chunk)


def simulate(plan: Plan, *, times: list[ChunkTimes], p2p_s: float, num_micro_batches: int,
             timeline: bool = False) -> PipelineResult:
    """Run every stage's task list; a heap of (finish time, stage) events drives the loop.

    Zero-bubble (after Qi et al. 2023): a B's weight-gradient W waits in a per-stage pool and
    runs whenever the next F/B is still waiting on another stage, or once the pool exceeds
    p - stage - 1 (which bounds the extra activation memory like ZB-H1).
    """
    p = plan.dims.pp
    split_weight = plan.schedule == Schedule.ZERO_BUBBLE
    queues = [stage_tasks(plan, stage=s, num_micro_batches=num_micro_batches) for s in range(p)]
    pools: list[list[Task]] = [[] for _ in range(p)]
    done: dict[tuple[Pass, int, int], float] = {}  # (kind, micro-batch, chunk) -> finish time
    cursor, free_at, busy, events = [0] * p, [0.0] * p, [0.0] * p, []
    trace: list[dict] = []

    def ready_at(task: Task, s: int) -> float | None:
        dep = _producer(task, len(times))
        if dep is None:
            return 0.0
        if dep not in done:
            return None
        return done[dep] + (p2p_s if dep[2] % p != s else 0.0)

    def try_start(s: int) -> None:
        if free_at[s] < 0:
            return
        head = queues[s][cursor[s]] if cursor[s] < len(queues[s]) else None
        ready = ready_at(head, s) if head is not None else None
        flush = pools[s] and (ready is None or len(pools[s]) > p - s - 1)
        if flush:
            task, ready = pools[s].pop(0), free_at[s]
        elif ready is None:
            return
        else:
            task, cursor[s] = head, cursor[s] + 1
        start = max(free_at[s], ready)
        end = start + _duration(task, times, split_weight=split_weight)
        busy[s] += end - start
        free_at[s] = -1.0  # busy until its event pops
        heapq.heappush(events, (end, s, task.kind.value, task.micro_batch, task.chunk, task.kind))
        if timeline:
            trace.append(_trace_event(task, stage=s, start_s=start, end_s=end))

    for s in range(p):
        try_start(s)
    while events:
        end, s, _, mb, chunk, kind = heapq.heappop(events)
        done[kind, mb, chunk], free_at[s] = end, end
        if split_weight and kind == Pass.B:
            pools[s].append(Task(Pass.W, mb, chunk))
        # only this stage and its two ring neighbours can start: a task's producer runs on the
        # stage before (F), after (B) or on its own (last B, W), and only this stage came free
        for other in sorted({(s - 1) % p, s, (s + 1) % p}):
            try_start(other)
    assert all(c == len(q) and not w for c, q, w in zip(cursor, queues, pools, strict=True)), "schedule deadlocked"
    return PipelineResult(makespan_s=max(free_at), busy_s=max(busy), timeline=trace if timeline else None)


def _trace_event(task: Task, *, stage: int, start_s: float, end_s: float) -> dict:
    """One Chrome-trace complete event (microseconds); pid 0, one thread per pipeline stage."""
    return {"name": f"{task.kind.value[0].upper()}{task.micro_batch}", "cat": task.kind.value, "ph": "X",
            "pid": 0, "tid": stage, "ts": start_s * 1e6, "dur": (end_s - start_s) * 1e6,
            "args": {"micro_batch": task.micro_batch, "chunk": task.chunk}}


def closed_form(plan: Plan, *, times: list[ChunkTimes], p2p_s: float, num_micro_batches: int) -> PipelineResult:
    """Makespan without per-event Python: exact for equal stages, the bottleneck bound otherwise.

    1F1B: (m - 1) * max_i(f_i + b_i) + sum_i(f_i + b_i) + 2(p - 1) * p2p (Narayanan Sec. 2.2.1);
    interleaved: the same with chunk times and m*v units; GPipe: forwards then backwards;
    zero-bubble: weight gradients fill the cool-down, leaving a (p - 1)(F + B) bubble (our greedy
    W placement; Qi et al. 2023's hand-built ZB-H1 order reaches (p - 1)(F + B - W)).
    """
    p, v, m = plan.dims.pp, plan.virtual_stages, num_micro_batches
    stage_f = [sum(times[c].fwd_s for c in range(s, len(times), p)) for s in range(p)]
    stage_b = [sum(times[c].bwd_s for c in range(s, len(times), p)) for s in range(p)]
    stage_w = [sum(times[c].weight_s for c in range(s, len(times), p)) for s in range(p)]
    busy = max(f + b for f, b in zip(stage_f, stage_b, strict=True))
    hop = 2 * (p - 1) * p2p_s
    match plan.schedule:
        case Schedule.GPIPE:
            span = sum(stage_f) + (m - 1) * max(stage_f) + sum(stage_b) + (m - 1) * max(stage_b) + hop
        case Schedule.ONE_F_ONE_B | Schedule.INTERLEAVED_1F1B:
            unit = [(f + b) / v for f, b in zip(stage_f, stage_b, strict=True)]
            span = (m * v - 1) * max(unit) + sum(unit) + hop * (1 if v == 1 else v)
        case Schedule.ZERO_BUBBLE:
            fill = [f + b - w for f, b, w in zip(stage_f, stage_b, stage_w, strict=True)]
            span = m * busy + max(0.0, sum(fill) - max(fill)) + hop
    return PipelineResult(makespan_s=max(span, m * busy), busy_s=m * busy)
