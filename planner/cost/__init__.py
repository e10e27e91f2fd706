"""estimate(graph, plan): step time, throughput, MFU/HFU and per-stage memory of one parallel plan.

Pure functions over numbers: compute.py times each layer's passes, comm.py each axis's
traffic on the tier its group spans, layers.py one layer's Cost per block kind and stage,
schedule.py the pipeline, memory.py the bytes per GPU; this module assembles the step.

Speed (one estimate < 5 ms for a 405B plan; the search prices thousands): the graph is reduced
once (ops.graph_summary, ops.layer_ops, memory.kind_activations); a plan is priced per block
kind and per distinct chunk / stage, never per layer or traced operator; and the block-kind
timings, which depend only on the graph, the Split and the profile, are memoised per graph
(layers.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from planner.cost.comm import dp_step_comm
from planner.cost.compute import PassTimes, block_kind_times, layer_times, op_counts, optimizer_s, split_for
from planner.cost.estimate import Estimate
from planner.cost.fp8 import element_bytes
from planner.cost.layers import Cost, KindCost, kind_costs
from planner.cost.memory import (
    RESERVED_BYTES,
    KindMemory,
    kind_memory,
    kind_params,
    long_context_terms,
    model_state_lower_bound,
    pipeline_memory,
    stage_counts,
    stage_params,
)
from planner.cost.offload import fits_host, optimizer_step
from planner.cost.ops import GraphKey, GraphSummary, graph_summary, layer_ops
from planner.cost.plausibility import implausibility
from planner.cost.schedule import ChunkTimes, PipelineResult, closed_form, simulate
from planner.cost.sequences import SequenceLoads, loads_notes, rank_loads, sequence_loads
from planner.cost.sharing import NodeWork, shared_step_s
from planner.cost.vocab import spread_vocab, vocab_comm_s
from planner.graph import ModelGraph
from planner.hardware import GroupSpan, HardwareProfile, node_group_profiles
from planner.cost.placement import Placement, boundary_p2p_s, loss_sync_s, pipeline_span, plan_placement
from planner.cost.terms import MemoryTerm, TimeTerm
from planner.plan import Axis, Plan, Recompute
from planner.scenario import GIB, ClusterSpec, HostSpec, JobSpec, Precision

__all__ = [
    "RESERVED_BYTES", "Cost", "Estimate", "GraphKey", "MemoryTerm", "TimeTerm", "estimate", "layer_compute_s",
    "layer_ops", "layer_times", "memory_lower_bound_bytes", "op_counts", "plan_placement", "rank_loads",
    "split_for",
]

_AXES = (Axis.TP, Axis.CP, Axis.EP, Axis.DP)


@dataclass(frozen=True, slots=True)
class _Context:
    graph: ModelGraph
    summary: GraphSummary
    plan: Plan
    hw: HardwareProfile
    job: JobSpec
    placement: Placement
    memory: dict[str, KindMemory]
    costs: dict[int, dict[str, KindCost]]  # per stage class (alike links and GPU type), per block kind
    profiles: tuple[HardwareProfile, ...]  # per node group (hardware.node_group_profiles)
    host: HostSpec
    loads: SequenceLoads
    pipeline: GroupSpan | None  # the whole pipeline group, for vocabulary parallelism only

    def stage_hw(self, stage: int) -> HardwareProfile:
        return self.profiles[self.placement.stage_group[stage]]


def estimate(graph: ModelGraph, plan: Plan, *, hw: HardwareProfile, cluster: ClusterSpec, job: JobSpec,
             timeline: bool = False, flash_attention: bool | None = None) -> Estimate:
    """Predict one training step of `plan` (Megatron-style execution) on `cluster` with profile `hw`.

    The attention kernel is the job's (`job.attention`, from its framework runtime);
    `flash_attention` overrides it: False prices the eager softmax attention of pre-2023 stacks
    (materialised scores, s^2 activations). Layers of one block kind cost the same, so chunks are priced as
    counts of kinds and no work scales with the number of layers.
    """
    flash = job.attention.fused if flash_attention is None else flash_attention
    ctx = _context(graph, plan, hw=hw, cluster=cluster, job=job, flash=flash)
    m = plan.num_micro_batches(job.global_batch)
    counts = _plan_counts(ctx.summary, plan)
    chunk_costs = _chunk_costs(ctx, counts)
    times = _chunk_times(chunk_costs)
    p2p = boundary_p2p_s(plan, ctx.placement, graph=graph, job=job, hw=hw)
    times, hop = _blocking_p2p(times, p2p, plan=plan, job=job)
    if timeline:
        pipe = simulate(plan, times=times, p2p_s=hop, num_micro_batches=m, timeline=True)
    else:
        pipe = closed_form(plan, times=times, p2p_s=hop, num_micro_batches=m)
    stages = counts.stages
    tail = _step_tail(ctx, counts=counts, chunk_costs=chunk_costs, loss_sync_s=loss_sync_s(hw, ctx.placement))
    memory = pipeline_memory(plan, kinds=ctx.memory, stages=stages, hidden_size=graph.hidden_size, job=job,
                             num_micro_batches=m, classes=counts.stage_class)
    memory, offloaded = long_context_terms(plan, memory, stages=stages, kinds=ctx.memory, graph=graph, job=job)
    if hw.runtime_bytes:
        memory = [terms | {"runtime": hw.runtime_bytes} for terms in memory]
    est = _assemble(ctx, cluster=cluster, chunk_costs=chunk_costs, pipe=pipe, tail=tail, m=m, p2p_s=p2p,
                    memory=memory)
    notes = loads_notes(ctx.loads) if job.sequences is not None else {}
    return replace(est, fits=est.fits and fits_host(offloaded, ctx.host), offloaded_bytes=offloaded, notes=notes)


def _context(graph: ModelGraph, plan: Plan, *, hw: HardwareProfile, cluster: ClusterSpec, job: JobSpec,
             flash: bool) -> _Context:
    if graph.seq_len != job.seq_len:
        raise ValueError(f"graph: traced at seq_len={graph.seq_len} but job.seq_len={job.seq_len}; re-extract it")
    if plan.dims.world_size != cluster.world_size:
        raise ValueError(f"dims: product {plan.dims.world_size} != cluster world size {cluster.world_size}")
    split = split_for(plan, graph=graph, precision=job.precision, flash=flash, job=job)
    placement = plan_placement(plan, cluster)
    memory = kind_memory(graph, plan, split=split, flash=flash)
    profiles = node_group_profiles(hw, cluster)
    loads = sequence_loads(job, dp=plan.dims.dp, balance=plan.balance)
    costs = {cls: kind_costs(plan, graph=graph, job=job, spans=placement.stages[cls], memory=memory, split=split,
                             hw=profiles[placement.stage_group[cls]], loads=loads, host=cluster.host)
             for cls in set(placement.stage_class)}  # layers.py
    pipeline = pipeline_span(plan, cluster) if plan.vocab_parallel and plan.dims.pp > 1 else None
    return _Context(graph, graph_summary(GraphKey(graph)), plan, hw, job, placement, memory, costs, profiles,
                    cluster.host, loads, pipeline)


@dataclass(frozen=True, slots=True)
class _Counts:
    """Block-kind counts per chunk and per pipeline rank, and for each the index of the first
    chunk (rank) with the same counts: the int that chunk and stage memos key on instead of
    tuple(counts.items()). Read-only: memoised per graph."""

    chunks: list[Counter[str]]
    stages: list[Counter[str]]
    chunk_class: tuple[int, ...]
    stage_class: tuple[int, ...]


def _plan_counts(summary: GraphSummary, plan: Plan) -> _Counts:
    """_Counts of a plan, memoised per graph by the partition (blocks per chunk, pp, vocabulary
    parallelism: nothing else moves a block between chunks)."""
    blocks = plan.stage_blocks(summary.num_blocks)
    key = ("stage_counts", tuple(blocks), plan.dims.pp, plan.vocab_parallel)
    if key not in summary.memo:
        chunks = spread_vocab(summary.chunk_counts(blocks), plan)  # vocab.py: embedding/head over all stages
        stages = stage_counts(chunks, pp=plan.dims.pp)
        summary.memo[key] = _Counts(chunks, stages, _first_alike(chunks), _first_alike(stages))
    return summary.memo[key]


def _first_alike(counts: list[Counter[str]]) -> tuple[int, ...]:
    first: dict[tuple, int] = {}
    return tuple(first.setdefault(tuple(c.items()), i) for i, c in enumerate(counts))


def _chunk_costs(ctx: _Context, counts: _Counts) -> list[KindCost]:
    """_chunk_cost of each chunk (chunk c runs on pipeline rank c % pp); chunks alike in kind
    counts and placement are priced once."""
    seen: dict[tuple[int, int], KindCost] = {}
    out, pp, stage_class = [], ctx.plan.dims.pp, ctx.placement.stage_class
    for c, cls in enumerate(counts.chunk_class):
        key = (cls, stage_class[c % pp])  # ctx.costs is keyed by the stage class
        if key not in seen:
            seen[key] = _chunk_cost(ctx, counts.chunks[c], ctx.costs[key[1]])
        out.append(seen[key])
    return out


def _chunk_cost(ctx: _Context, counts: Counter[str], costs: dict[str, KindCost]) -> KindCost:
    action = Cost(exposed_comm_s=_pipe_action_s(ctx.plan, ctx.hw))
    fwd, bwd, weight_s = action, action, 0.0
    if ctx.pipeline is not None:  # vocab.py: the pipeline-wide collectives, spread over the virtual stages
        vf, vb = vocab_comm_s(ctx.plan, graph=ctx.graph, job=ctx.job, span=ctx.pipeline, hw=ctx.hw)
        vp = ctx.plan.virtual_stages
        fwd = action + Cost(comm_s={TimeTerm.VOCAB: vf / vp}, exposed_comm_s=vf / vp)
        bwd = action + Cost(comm_s={TimeTerm.VOCAB: vb / vp}, exposed_comm_s=vb / vp)
    for kind, n in counts.items():
        c = costs[kind]
        fwd, bwd, weight_s = fwd + c.fwd * n, bwd + c.bwd * n, weight_s + c.weight_s * n
    return KindCost(fwd, bwd, weight_s)


def _pipe_action_s(plan: Plan, hw: HardwareProfile) -> float:
    """Host time of one pipeline action (a chunk's forward or backward of one micro-batch) beyond
    its compute (HostOverhead.pipe_action_us). Charged as exposed time: every stage pays it in
    lockstep and its core does no model work meanwhile, so it lengthens the critical path and,
    on shared cores, the node's blocked time; 0 without pipelining."""
    if plan.dims.pp == 1 or hw.host is None:
        return 0.0
    return hw.host.pipe_action_us * 1e-6


def _chunk_times(chunk_costs: list[KindCost]) -> list[ChunkTimes]:
    """The schedule's view of each chunk; chunks sharing one KindCost (alike, _chunk_costs)
    share one ChunkTimes (an interleaved 405B plan has 96 chunks of two or three kinds)."""
    made: dict[int, ChunkTimes] = {}
    out = []
    for c in chunk_costs:
        t = made.get(id(c))
        if t is None:
            t = made[id(c)] = ChunkTimes(fwd_s=c.fwd.total_s, bwd_s=c.bwd.total_s, weight_s=c.weight_s)
        out.append(t)
    return out


def _blocking_p2p(times: list[ChunkTimes], p2p_s: float, *, plan: Plan, job: JobSpec) -> tuple[list[ChunkTimes], float]:
    """(chunk times, hop latency) for the schedule. A stack that waits for each schedule step's
    send/recv batch before its next compute (job.pp_comm_overlap False) keeps the stage busy for the
    transfer: every chunk's forward but the last chunk's and every backward but the first chunk's
    ends with one exchange, and the receiver holds the data when that exchange ends (no extra hop)."""
    if job.pp_comm_overlap or plan.dims.pp == 1:
        return times, p2p_s
    last, made, out = len(times) - 1, {}, []
    for c, t in enumerate(times):
        key = (id(t), c < last, c > 0)  # alike chunks share a ChunkTimes (_chunk_times)
        if key not in made:
            made[key] = ChunkTimes(fwd_s=t.fwd_s + (p2p_s if c < last else 0.0),
                                   bwd_s=t.bwd_s + (p2p_s if c > 0 else 0.0), weight_s=t.weight_s)
        out.append(made[key])
    return out, 0.0


@dataclass(frozen=True, slots=True)
class _Tail:
    """After the pipeline drains, on the slowest stage: exposed gradient sync and optimizer step;
    and every pipeline rank's optimizer seconds (busy work for core sharing)."""

    exposed_s: float
    dp_total_s: float
    optimizer_s: float
    stage_optimizer_s: tuple[float, ...] = ()


def _step_tail(ctx: _Context, *, counts: _Counts, chunk_costs: list[KindCost], loss_sync_s: float) -> _Tail:
    plan, job, p = ctx.plan, ctx.job, ctx.plan.dims.pp
    d = plan.dims
    worst, seen, stage_opt = _Tail(0.0, 0.0, 0.0), {}, []
    for stage, counts_class in enumerate(counts.stage_class):
        chunks = chunk_costs[stage::p]
        signature = (counts_class, tuple(map(id, chunks)), ctx.placement.stage_class[stage])  # alike in kinds, costs, links
        if signature in seen:
            stage_opt.append(seen[signature])
            continue
        spans, hw, counts_here = ctx.placement.stages[stage], ctx.stage_hw(stage), counts.stages[stage]
        params = stage_params(ctx.memory, counts_here)
        dp = dp_step_comm(plan, dense_params=params.dense, expert_params=params.expert, job=job, spans=spans,
                          hw=hw, bwd_window_s=sum(c.bwd.total_s for c in chunks),
                          fwd_window_s=sum(c.fwd.total_s for c in chunks),
                          num_micro_batches=plan.num_micro_batches(job.global_batch))
        local = params.dense / (d.dp * d.cp) + params.expert / d.edp if plan.zero_stage else params.dense + params.expert
        opt = optimizer_s(local, state_bytes=job.optimizer.state_bytes, grad_bytes=job.optimizer.grad_bytes_per_param,
                          param_bytes=element_bytes(plan, job=job), hw=hw)
        opt = optimizer_step(plan, local_params=local, job=job, host=ctx.host, gpu_optimizer_s=opt,
                             bwd_window_s=sum(c.bwd.total_s for c in chunks)).exposed_s  # offload.py
        seen[signature] = opt
        stage_opt.append(opt)
        worst = max(worst, _Tail(dp.exposed_s + opt, dp.total_s, opt), key=lambda t: t.exposed_s)
    return _Tail(worst.exposed_s + loss_sync_s, worst.dp_total_s + loss_sync_s, worst.optimizer_s, tuple(stage_opt))


def _assemble(ctx: _Context, *, cluster: ClusterSpec, chunk_costs: list[KindCost], pipe: PipelineResult,
              tail: _Tail, m: int, p2p_s: float, memory: list[dict[str, float]]) -> Estimate:
    p, job, graph = ctx.plan.dims.pp, ctx.job, ctx.graph
    per_stage = _stage_costs(chunk_costs, pp=p)
    critical = max(per_stage, key=lambda c: c.total_s) * m
    solo_s = pipe.makespan_s + tail.exposed_s
    blocked_s = critical.exposed_comm_s + tail.exposed_s - tail.optimizer_s
    work = NodeWork(stage_busy_s=[m * (c.compute_s + c.recompute_s) + opt
                                  for c, opt in zip(per_stage, tail.stage_optimizer_s, strict=True)],
                    blocked_s=blocked_s)
    step_s = shared_step_s(solo_s, work, hw=ctx.hw, cluster=cluster)
    breakdown = {TimeTerm.COMPUTE: critical.compute_s, TimeTerm.RECOMPUTE: critical.recompute_s}
    breakdown |= {TimeTerm(axis.value): critical.comm_s.get(axis, 0.0) for axis in _AXES}
    breakdown[TimeTerm.DP] += tail.dp_total_s
    breakdown |= {TimeTerm.PP: 2 * m * p2p_s if p > 1 else 0.0,
                  TimeTerm.PIPELINE_ACTIONS: 2 * m * ctx.plan.virtual_stages * _pipe_action_s(ctx.plan, ctx.hw),
                  TimeTerm.EXPOSED_COMM: critical.exposed_comm_s + tail.exposed_s - tail.optimizer_s,
                  TimeTerm.BUBBLE: pipe.makespan_s - critical.total_s, TimeTerm.OPTIMIZER: tail.optimizer_s,
                  TimeTerm.CORE_SHARING: step_s - solo_s, TimeTerm.VOCAB: critical.comm_s.get(TimeTerm.VOCAB, 0.0),
                  TimeTerm.OFFLOAD: critical.comm_s.get(TimeTerm.OFFLOAD, 0.0)}
    scale = job.global_batch / graph.sample_batch
    model_flops = (ctx.summary.fwd_flops + ctx.summary.bwd_flops) * scale
    groups = ctx.placement.stage_group  # each stage's node group: its profile, looked up once per group
    group_peak = {g: ctx.profiles[g].peak_flops(job.precision) for g in dict.fromkeys(groups)}
    peak = sum(group_peak[g] for g in groups) * (cluster.world_size // p) * step_s  # summed in stage order
    peak_mem = max(sum(t.values()) for t in memory)
    capacity = min(ctx.profiles[g].memory_gib for g in group_peak) * GIB - RESERVED_BYTES  # the smallest GPU
    mfu = model_flops / peak
    return Estimate(
        step_time_s=step_s, tokens_per_s_per_gpu=job.tokens_per_step / (step_s * cluster.world_size),
        mfu=mfu, hfu=(model_flops + _recompute_flops(ctx) * scale) / peak,
        peak_memory_bytes=peak_mem, fits=peak_mem <= capacity, memory_capacity_bytes=capacity,
        stage_memory=memory, time_breakdown_s=breakdown, bubble_fraction=pipe.bubble_fraction,
        num_micro_batches=m, timeline=pipe.timeline,
        implausible=implausibility(mfu, family=ctx.hw.device.family, moe=ctx.summary.moe is not None,
                                   fp8=job.precision == Precision.FP8),
    )


def _stage_costs(chunk_costs: list[KindCost], *, pp: int) -> list[Cost]:
    """Forward + backward Cost of one micro-batch on each pipeline rank; ranks whose chunks are
    the same (shared) chunk costs are summed once."""
    seen: dict[tuple[int, ...], Cost] = {}
    out = []
    for s in range(pp):
        chunks = chunk_costs[s::pp]
        key = tuple(map(id, chunks))
        if key not in seen:
            seen[key] = sum((c.fwd + c.bwd for c in chunks), Cost())
        out.append(seen[key])
    return out


def _recompute_flops(ctx: _Context) -> float:
    """FLOPs replayed by activation recompute for the traced sample (hardware minus model FLOPs)."""
    match ctx.plan.recompute:
        case Recompute.FULL:
            return ctx.summary.full_recompute_flops
        case Recompute.SELECTIVE:
            return ctx.summary.selective_recompute_flops
        case Recompute.NONE:
            return 0.0


def memory_lower_bound_bytes(graph: ModelGraph, plan: Plan, job: JobSpec, cluster: ClusterSpec) -> float:
    """Weights + gradients + optimizer states of the heaviest stage: no plan fits below this.

    Needs no hardware profile or timing; `cluster` is accepted for the search's uniform call.
    """
    assert plan.dims.world_size == cluster.world_size, "plan and cluster disagree on the world size"
    stages = _plan_counts(graph_summary(GraphKey(graph)), plan).stages
    return model_state_lower_bound(plan, kinds=kind_params(graph, plan), stages=stages, job=job)


def layer_compute_s(graph: ModelGraph, plan: Plan, *, hw: HardwareProfile, job: JobSpec) -> tuple[float, ...]:
    """Compute seconds of each graph layer for one micro-batch on one GPU (forward, recompute and
    backward) as estimate() prices them; the stage-partition ILP balances stages with these."""
    kinds = block_kind_times(graph, split=split_for(plan, graph=graph, precision=job.precision), hw=hw)
    return tuple(_pass_total(kinds[layer.block_kind]) for layer in graph.layers)


def _pass_total(t: PassTimes) -> float:
    return t.fwd_s + t.recompute_s + t.bwd_input_s + t.bwd_weight_s
