"""One layer of each block kind on one stage's GPUs and links, for one micro-batch: its compute,
its traffic per axis and the share of that traffic left exposed (the `Cost` that chunks, stages
and the step sum). cost/__init__ assembles the step from these.

Block-kind timings depend only on the graph, the Split and the profile, so they are memoised per
graph (in its summary); the plan's links, knobs and document loads are applied on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost.comm import (LayerComm, Spans, block_comm, interference_s, param_modules, tp_exposed_s,
                               zero3_layer_comm)
from planner.cost.compute import PassTimes, Split, block_kind_times
from planner.cost.context import CpComm, cp_exposed_s
from planner.cost.fp8 import element_bytes
from planner.cost.longctx import layer_extras
from planner.cost.memory import KindMemory
from planner.cost.ops import GraphKey, graph_summary
from planner.cost.sequences import SequenceLoads, masked_times
from planner.graph import BlockKind, ModelGraph
from planner.hardware import HardwareProfile, IdentityKey
from planner.plan import Axis, Plan, ZeroStage
from planner.scenario import HostSpec, JobSpec, ShardingRuntime

NON_BLOCK_KINDS = ("embedding", "head")
# FSDP1 (torch.distributed.fsdp, FlatParameter) with use_orig_params: a unit's parameters are
# split views of its flat parameter, so autograd assembles the flat gradient with one cat of the
# views' 16-bit gradients (split_with_sizes backward: read 2 + write 2 bytes per parameter);
# _post_backward_hook then casts it to the reduce dtype when that differs and _reduce_grad
# pre-divides it in place (_div_if_needed, gradient_predivide_factor > 1 from 2 ranks up) before
# the reduce-scatter (torch/distributed/fsdp/_runtime_utils.py, 2.0-2.2).
FSDP1_GRAD_VIEW_BYTES = 4.0


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


@dataclass(frozen=True, slots=True)
class KindCost:
    """One layer of a block kind for one micro-batch: forward and backward Cost, weight-grad seconds."""

    fwd: Cost
    bwd: Cost
    weight_s: float


def kind_costs(plan: Plan, *, graph: ModelGraph, job: JobSpec, spans: Spans, hw: HardwareProfile,
               memory: dict[str, KindMemory], split: Split, loads: SequenceLoads,
               host: HostSpec) -> dict[str, KindCost]:
    """One layer of each block kind on one stage's GPUs and links, for one micro-batch."""
    out, key = {}, GraphKey(graph)
    for kind, t in _kind_times(key, split, IdentityKey(hw)).items():
        block = kind not in NON_BLOCK_KINDS
        if block:  # document masking and the slowest DP rank (sequences.py)
            t = masked_times(t, loads=loads, recompute=plan.recompute)
        fwd = Cost(compute_s=t.fwd_s)
        bwd = Cost(compute_s=t.bwd_input_s + t.bwd_weight_s, recompute_s=t.recompute_s)
        if block:
            comm = block_comm(plan, graph=graph, job=job, moe_block=kind == BlockKind.MOE, spans=spans, hw=hw)
            cf, cb = _block_comm_costs(plan, comm, t, job=job, hw=hw)
            fwd, bwd = fwd + cf, bwd + cb
            if plan.zero_stage == ZeroStage.PARAMETERS:
                zf, zb = _zero3_costs(plan, memory[kind], t, job=job, spans=spans, hw=hw, m=param_modules(key)[kind])
                fwd, bwd = fwd + zf, bwd + zb
        if plan.zero_stage >= ZeroStage.GRADIENTS and job.zero3_runtime == ShardingRuntime.FSDP1:
            bwd = bwd + Cost(compute_s=hw.memory_bound_s(
                (memory[kind].dense_params + memory[kind].expert_params) * fsdp1_grad_bytes(plan, job=job)))
        x = layer_extras(plan, block=block, mem=memory[kind], t=t, loads=loads, graph=graph, job=job,
                         dp_span=spans.dp, hw=hw, host=host)  # longctx.py: Zeppelin moves, offload streams
        if x is not None:
            fwd = fwd + Cost(comm_s=x.fwd_comm_s, exposed_comm_s=x.fwd_exposed_s)
            bwd = bwd + Cost(comm_s=x.bwd_comm_s, exposed_comm_s=x.bwd_exposed_s)
        out[kind] = KindCost(fwd, bwd, t.bwd_weight_s)
    return out


def fsdp1_grad_bytes(plan: Plan, *, job: JobSpec) -> float:
    """Bytes FSDP1 moves per parameter over a unit's unsharded gradient each backward: the cat of
    its views' gradients, the cast to the reduce dtype, the in-place pre-divide. The cast and
    divide run on FSDP's post-backward stream beside the next unit's backward, sharing its SMs
    and HBM, so they lengthen the backward like its own kernels."""
    grad_b, reduce_b = element_bytes(plan, job=job), job.grad_reduce_bytes
    cast = grad_b + reduce_b if reduce_b != grad_b else 0.0
    return FSDP1_GRAD_VIEW_BYTES + cast + 2.0 * reduce_b


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


def _block_comm_costs(plan: Plan, c: LayerComm, t: PassTimes, *, job: JobSpec,
                      hw: HardwareProfile) -> tuple[Cost, Cost]:
    """EP collectives are exposed (blocking in Megatron), TP ones unless overlapped with their GEMMs
    (comm.tp_exposed_s); CP ring traffic hides behind attention, slowing it (comm.interference_s), all-to-all
    does not (context.py)."""
    ring = CpComm(ring_fwd_s=c.cp_fwd_s - c.cp_a2a_fwd_s, ring_bwd_s=c.cp_bwd_s - c.cp_a2a_bwd_s,
                  a2a_fwd_s=c.cp_a2a_fwd_s, a2a_bwd_s=c.cp_a2a_bwd_s)
    rates = hw.flash.get(job.attention.value) if job.attention.fused else None
    overlap = rates is None or not rates.persistent  # profile.FlashRates.persistent
    cp_f, cp_b = cp_exposed_s(ring, attention_fwd_s=t.attention_fwd_s, attention_bwd_s=t.attention_bwd_s,
                              ring_ranks=plan.dims.cp // plan.ulysses_degree(), overlap=overlap)
    cp_f += interference_s(ring.ring_fwd_s - (cp_f - ring.a2a_fwd_s), hw)  # the hidden share of the ring
    cp_b += interference_s(ring.ring_bwd_s - (cp_b - ring.a2a_bwd_s), hw)
    tp_f = tp_exposed_s(c.tp_fwd_s, plan=plan, job=job, gemm_s=t.fwd_s - t.attention_fwd_s)
    tp_b = tp_exposed_s(c.tp_bwd_s, plan=plan, job=job,
                        gemm_s=t.bwd_input_s + t.bwd_weight_s + t.recompute_s - t.attention_bwd_s)
    exp_f = tp_f + c.ep_fwd_s + cp_f
    exp_b = tp_b + c.ep_bwd_s + cp_b
    comm_f = {Axis.TP: c.tp_fwd_s, Axis.CP: c.cp_fwd_s, Axis.EP: c.ep_fwd_s}
    comm_b = {Axis.TP: c.tp_bwd_s, Axis.CP: c.cp_bwd_s, Axis.EP: c.ep_bwd_s}
    return (Cost(comm_s=comm_f, exposed_comm_s=t.past_host_fwd_s(exp_f)),  # PassTimes.past_host_fwd_s
            Cost(comm_s=comm_b, exposed_comm_s=t.past_host_bwd_s(exp_b)))


def _zero3_costs(plan: Plan, mem: KindMemory, t: PassTimes, *, job: JobSpec, spans: Spans,
                 hw: HardwareProfile, m: int) -> tuple[Cost, Cost]:
    """Per-layer gathers behind the previous layer's compute, over `m` sub-modules (see comm.zero3_layer_comm)."""
    z = zero3_layer_comm(mem.dense_params + mem.expert_params, plan=plan, job=job, span=spans.dp, hw=hw, modules=m,
                         fwd_window_s=t.fwd_s, bwd_window_s=t.bwd_input_s + t.bwd_weight_s + t.recompute_s)
    return (Cost(comm_s={Axis.DP: z.fwd_s}, exposed_comm_s=z.exposed_fwd_s),
            Cost(comm_s={Axis.DP: z.bwd_s}, exposed_comm_s=z.exposed_bwd_s))
