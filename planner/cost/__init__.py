"""estimate(graph, plan): step time, throughput, MFU/HFU and per-stage memory of one parallel plan.

Pure functions over numbers: compute.py times each layer's passes, comm.py each axis's
traffic on the tier its group spans, schedule.py the pipeline, memory.py the bytes per GPU.

Speed (one estimate < 5 ms for a 405B plan; the search prices thousands): the graph is reduced
once (ops.graph_summary, ops.layer_ops, memory.kind_activations); a plan is priced per block
kind and per distinct chunk / stage, never per layer or traced operator; and the block-kind
timings, which depend only on the graph, the Split and the profile, are memoised per graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from planner.cost.comm import (
    LayerComm,
    Spans,
    block_comm,
    dp_step_comm,
    interference_s,
    tp_exposed_s,
    zero3_layer_comm,
)
from planner.cost.compute import PassTimes, Split, block_kind_times, layer_times, op_counts, optimizer_s, split_for
from planner.cost.memory import (
    RESERVED_BYTES,
    KindMemory,
    kind_memory,
    kind_params,
    model_state_lower_bound,
    pipeline_memory,
    stage_counts,
    stage_params,
)
from planner.cost.ops import GraphKey, GraphSummary, graph_summary, layer_ops
from planner.cost.plausibility import implausibility
from planner.cost.schedule import ChunkTimes, PipelineResult, closed_form, simulate
from planner.cost.sharing import NodeWork, shared_step_s
from planner.graph import BlockKind, ModelGraph
from planner.hardware import HardwareProfile, IdentityKey, node_group_profiles
from planner.cost.placement import Placement, boundary_p2p_s, loss_sync_s, plan_placement
from planner.cost.terms import MemoryTerm, TimeTerm
from planner.plan import Axis, Plan, Recompute, ZeroStage
from planner.scenario import GIB, ClusterSpec, JobSpec, Precision

__all__ = [
    "RESERVED_BYTES", "Cost", "Estimate", "GraphKey", "MemoryTerm", "TimeTerm", "estimate", "layer_compute_s",
    "layer_ops", "layer_times", "memory_lower_bound_bytes", "op_counts", "plan_placement", "split_for",
]

_AXES = (Axis.TP, Axis.CP, Axis.EP, Axis.DP)
_NON_BLOCK_KINDS = ("embedding", "head")


@dataclass(frozen=True, slots=True)
class Cost:
    """Time of some work on one GPU: compute, traffic per axis, and the traffic left exposed."""

    compute_s: float = 0.0
    recompute_s: float = 0.0
    comm_s: dict[Axis, float] = field(default_factory=dict)
    exposed_comm_s: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        comm = dict(self.comm_s)
        for axis, t in other.comm_s.items():
            comm[axis] = comm.get(axis, 0.0) + t
        return Cost(self.compute_s + other.compute_s, self.recompute_s + other.recompute_s, comm,
                    self.exposed_comm_s + other.exposed_comm_s)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.compute_s * k, self.recompute_s * k, {a: t * k for a, t in self.comm_s.items()},
                    self.exposed_comm_s * k)

    @property
    def total_s(self) -> float:
        return self.compute_s + self.recompute_s + self.exposed_comm_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    step_time_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    hfu: float
    peak_memory_bytes: float
    fits: bool
    memory_capacity_bytes: float
    stage_memory: list[dict[MemoryTerm, float]]
    time_breakdown_s: dict[TimeTerm, float]
    bubble_fraction: float
    num_micro_batches: int
    timeline: list[dict] | None = None
    implausible: str | None = None  # why the MFU exceeds the best published run of its class (plausibility.py)

    def to_dict(self) -> dict:
        return {
            "step_time_s": self.step_time_s, "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu, "hfu": self.hfu, "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_gib": self.peak_memory_bytes / GIB, "fits": self.fits,
            "memory_capacity_bytes": self.memory_capacity_bytes,
            "memory_capacity_gib": self.memory_capacity_bytes / GIB,
            "stage_memory": self.stage_memory,
            "memory_gib": [{k: v / GIB for k, v in terms.items()} | {"total": sum(terms.values()) / GIB}
                           for terms in self.stage_memory],
            "time_breakdown_s": self.time_breakdown_s, "bubble_fraction": self.bubble_fraction,
            "num_micro_batches": self.num_micro_batches, "timeline": self.timeline,
            "implausible": self.implausible,
        }


@dataclass(frozen=True, slots=True)
class _KindCost:
    """One layer of a block kind for one micro-batch: forward and backward Cost, weight-grad seconds."""

    fwd: Cost
    bwd: Cost
    weight_s: float


@dataclass(frozen=True, slots=True)
class _Context:
    graph: ModelGraph
    summary: GraphSummary
    plan: Plan
    hw: HardwareProfile
    job: JobSpec
    placement: Placement
    memory: dict[str, KindMemory]
    costs: dict[int, dict[str, _KindCost]]  # per stage class (alike links and GPU type), per block kind
    profiles: tuple[HardwareProfile, ...]  # per node group (hardware.node_group_profiles)

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
    chunk_counts, stages = _plan_counts(ctx.summary, plan)
    chunk_costs = _chunk_costs(ctx, chunk_counts)
    times = [ChunkTimes(fwd_s=c.fwd.total_s, bwd_s=c.bwd.total_s, weight_s=c.weight_s) for c in chunk_costs]
    p2p = boundary_p2p_s(plan, ctx.placement, graph=graph, job=job, hw=hw)
    if timeline:
        pipe = simulate(plan, times=times, p2p_s=p2p, num_micro_batches=m, timeline=True)
    else:
        pipe = closed_form(plan, times=times, p2p_s=p2p, num_micro_batches=m)
    tail = _step_tail(ctx, stages=stages, chunk_costs=chunk_costs, loss_sync_s=loss_sync_s(hw, ctx.placement))
    memory = pipeline_memory(plan, kinds=ctx.memory, stages=stages, hidden_size=graph.hidden_size, job=job,
                             num_micro_batches=m)
    if hw.runtime_bytes:
        memory = [terms | {"runtime": hw.runtime_bytes} for terms in memory]
    return _assemble(ctx, cluster=cluster, chunk_costs=chunk_costs, pipe=pipe, tail=tail, m=m, p2p_s=p2p,
                     memory=memory)


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
    costs = {cls: _kind_costs(plan, graph=graph, job=job, spans=placement.stages[cls], memory=memory, split=split,
                              hw=profiles[placement.stage_group[cls]]) for cls in set(placement.stage_class)}
    return _Context(graph, graph_summary(GraphKey(graph)), plan, hw, job, placement, memory, costs, profiles)


def _kind_costs(plan: Plan, *, graph: ModelGraph, job: JobSpec, spans: Spans, hw: HardwareProfile,
                memory: dict[str, KindMemory], split: Split) -> dict[str, _KindCost]:
    """One layer of each block kind on one stage's GPUs and links, for one micro-batch."""
    out = {}
    for kind, t in _kind_times(GraphKey(graph), split, IdentityKey(hw)).items():
        fwd = Cost(compute_s=t.fwd_s)
        bwd = Cost(compute_s=t.bwd_input_s + t.bwd_weight_s, recompute_s=t.recompute_s)
        if kind not in _NON_BLOCK_KINDS:
            comm = block_comm(plan, graph=graph, job=job, moe_block=kind == BlockKind.MOE, spans=spans, hw=hw)
            cf, cb = _block_comm_costs(plan, comm, t, job=job, hw=hw)
            fwd, bwd = fwd + cf, bwd + cb
            if plan.zero_stage == ZeroStage.PARAMETERS:
                zf, zb = _zero3_costs(plan, memory[kind], t, job=job, spans=spans, hw=hw)
                fwd, bwd = fwd + zf, bwd + zb
        out[kind] = _KindCost(fwd, bwd, t.bwd_weight_s)
    return out


_KIND_TIMES_PER_GRAPH = 4096  # memo entries kept per graph (distinct Split x profile pairs)


def _kind_times(graph: GraphKey, split: Split, hw: IdentityKey) -> dict[str, PassTimes]:
    """block_kind_times memoised per graph: plans that differ only in dp, pp, ZeRO or schedule
    share a Split. The memo lives in the graph's summary (a bounded LRU cache)."""
    memo = graph_summary(graph).memo
    key = ("kind_times", split, hw)
    if key not in memo:
        if len(memo) >= _KIND_TIMES_PER_GRAPH:
            memo.clear()
        memo[key] = block_kind_times(graph.graph, split=split, hw=hw.obj)
    return memo[key]


def _plan_counts(summary: GraphSummary, plan: Plan) -> tuple[list[Counter[str]], list[Counter[str]]]:
    """Block-kind counts per chunk and per pipeline rank, memoised per graph by the partition."""
    blocks = plan.stage_blocks(summary.num_blocks)
    key = ("stage_counts", tuple(blocks), plan.dims.pp)
    chunks = summary.chunk_counts(blocks)
    if key not in summary.memo:
        summary.memo[key] = stage_counts(chunks, pp=plan.dims.pp)
    return chunks, summary.memo[key]


def _chunk_costs(ctx: _Context, chunk_counts: list[Counter[str]]) -> list[_KindCost]:
    """_chunk_cost of each chunk (chunk c runs on pipeline rank c % pp); chunks alike in kind
    counts and placement are priced once."""
    seen: dict[tuple, _KindCost] = {}
    out = []
    for c, counts in enumerate(chunk_counts):
        costs = ctx.costs[ctx.placement.stage_class[c % ctx.plan.dims.pp]]
        key = (tuple(counts.items()), id(costs))
        if key not in seen:
            seen[key] = _chunk_cost(ctx, counts, costs)
        out.append(seen[key])
    return out


def _chunk_cost(ctx: _Context, counts: Counter[str], costs: dict[str, _KindCost]) -> _KindCost:
    action = Cost(exposed_comm_s=_pipe_action_s(ctx.plan, ctx.hw))
    fwd, bwd, weight_s = action, action, 0.0
    for kind, n in counts.items():
        c = costs[kind]
        fwd, bwd, weight_s = fwd + c.fwd * n, bwd + c.bwd * n, weight_s + c.weight_s * n
    return _KindCost(fwd, bwd, weight_s)


def _pipe_action_s(plan: Plan, hw: HardwareProfile) -> float:
    """Host time of one pipeline action (a chunk's forward or backward of one micro-batch) beyond
    its compute (HostOverhead.pipe_action_us). Charged as exposed time: every stage pays it in
    lockstep and its core does no model work meanwhile, so it lengthens the critical path and,
    on shared cores, the node's blocked time; 0 without pipelining."""
    if plan.dims.pp == 1 or hw.host is None:
        return 0.0
    return hw.host.pipe_action_us * 1e-6


def _block_comm_costs(plan: Plan, c: LayerComm, t: PassTimes, *, job: JobSpec,
                      hw: HardwareProfile) -> tuple[Cost, Cost]:
    """EP collectives are exposed (blocking in Megatron), TP ones unless overlapped with their GEMMs
    (comm.tp_exposed_s); CP ring traffic hides behind attention, slowing it (comm.interference_s)."""
    cp = plan.dims.cp
    hidden_f = t.attention_fwd_s * (cp - 1) / cp
    hidden_b = t.attention_bwd_s * (cp - 1) / cp
    tp_f = tp_exposed_s(c.tp_fwd_s, plan=plan, job=job, gemm_s=t.fwd_s - t.attention_fwd_s)
    tp_b = tp_exposed_s(c.tp_bwd_s, plan=plan, job=job,
                        gemm_s=t.bwd_input_s + t.bwd_weight_s + t.recompute_s - t.attention_bwd_s)
    exp_f = tp_f + c.ep_fwd_s + max(0.0, c.cp_fwd_s - hidden_f) + interference_s(min(c.cp_fwd_s, hidden_f), hw)
    exp_b = tp_b + c.ep_bwd_s + max(0.0, c.cp_bwd_s - hidden_b) + interference_s(min(c.cp_bwd_s, hidden_b), hw)
    comm_f = {Axis.TP: c.tp_fwd_s, Axis.CP: c.cp_fwd_s, Axis.EP: c.ep_fwd_s}
    comm_b = {Axis.TP: c.tp_bwd_s, Axis.CP: c.cp_bwd_s, Axis.EP: c.ep_bwd_s}
    return Cost(comm_s=comm_f, exposed_comm_s=exp_f), Cost(comm_s=comm_b, exposed_comm_s=exp_b)


def _zero3_costs(plan: Plan, mem: KindMemory, t: PassTimes, *, job: JobSpec, spans: Spans,
                 hw: HardwareProfile) -> tuple[Cost, Cost]:
    """Per-layer parameter gathers prefetched behind the previous layer's compute (see comm.zero3_layer_comm)."""
    z = zero3_layer_comm(mem.dense_params + mem.expert_params, plan=plan, job=job, span=spans.dp, hw=hw,
                         fwd_window_s=t.fwd_s, bwd_window_s=t.bwd_input_s + t.bwd_weight_s + t.recompute_s)
    return (Cost(comm_s={Axis.DP: z.fwd_s}, exposed_comm_s=z.exposed_fwd_s),
            Cost(comm_s={Axis.DP: z.bwd_s}, exposed_comm_s=z.exposed_bwd_s))


@dataclass(frozen=True, slots=True)
class _Tail:
    """After the pipeline drains, on the slowest stage: exposed gradient sync and optimizer step;
    and every pipeline rank's optimizer seconds (busy work for core sharing)."""

    exposed_s: float
    dp_total_s: float
    optimizer_s: float
    stage_optimizer_s: tuple[float, ...] = ()


def _step_tail(ctx: _Context, *, stages: list[Counter[str]], chunk_costs: list[_KindCost],
               loss_sync_s: float) -> _Tail:
    plan, job, p = ctx.plan, ctx.job, ctx.plan.dims.pp
    d = plan.dims
    worst, seen, stage_opt = _Tail(0.0, 0.0, 0.0), {}, []
    for stage, counts in enumerate(stages):
        chunks = chunk_costs[stage::p]
        spans, hw = ctx.placement.stages[stage], ctx.stage_hw(stage)
        signature = (tuple(counts.items()), tuple(map(id, chunks)), ctx.placement.stage_class[stage])  # alike in kinds, costs, links
        if signature in seen:
            stage_opt.append(seen[signature])
            continue
        params = stage_params(ctx.memory, counts)
        dp = dp_step_comm(plan, dense_params=params.dense, expert_params=params.expert, job=job, spans=spans,
                          hw=hw, bwd_window_s=sum(c.bwd.total_s for c in chunks),
                          fwd_window_s=sum(c.fwd.total_s for c in chunks))
        local = params.dense / (d.dp * d.cp) + params.expert / d.edp if plan.zero_stage else params.dense + params.expert
        opt = optimizer_s(local, state_bytes=job.optimizer.state_bytes, grad_bytes=job.optimizer.grad_bytes_per_param,
                          param_bytes=job.precision.bytes, hw=hw)
        seen[signature] = opt
        stage_opt.append(opt)
        worst = max(worst, _Tail(dp.exposed_s + opt, dp.total_s, opt), key=lambda t: t.exposed_s)
    return _Tail(worst.exposed_s + loss_sync_s, worst.dp_total_s + loss_sync_s, worst.optimizer_s, tuple(stage_opt))


def _assemble(ctx: _Context, *, cluster: ClusterSpec, chunk_costs: list[_KindCost], pipe: PipelineResult,
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
                  TimeTerm.CORE_SHARING: step_s - solo_s}
    scale = job.global_batch / graph.sample_batch
    model_flops = (ctx.summary.fwd_flops + ctx.summary.bwd_flops) * scale
    peak = sum(ctx.stage_hw(s).peak_flops(job.precision) for s in range(p)) * (cluster.world_size // p) * step_s
    peak_mem = max(sum(t.values()) for t in memory)
    capacity = min(ctx.stage_hw(s).memory_gib for s in range(p)) * GIB - RESERVED_BYTES  # the smallest GPU
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


def _stage_costs(chunk_costs: list[_KindCost], *, pp: int) -> list[Cost]:
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
    _, stages = _plan_counts(graph_summary(GraphKey(graph)), plan)
    return model_state_lower_bound(plan, kinds=kind_params(graph, plan), stages=stages, job=job)


def layer_compute_s(graph: ModelGraph, plan: Plan, *, hw: HardwareProfile, job: JobSpec) -> tuple[float, ...]:
    """Compute seconds of each graph layer for one micro-batch on one GPU (forward, recompute and
    backward) as estimate() prices them; the stage-partition ILP balances stages with these."""
    kinds = block_kind_times(graph, split=split_for(plan, graph=graph, precision=job.precision), hw=hw)
    return tuple(_pass_total(kinds[layer.block_kind]) for layer in graph.layers)


def _pass_total(t: PassTimes) -> float:
    return t.fwd_s + t.recompute_s + t.bwd_input_s + t.bwd_weight_s
