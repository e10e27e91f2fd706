"""Communication per parallel axis: bytes per collective, the tier each group spans, and exposure.

Groups come from the plan's rank order (outermost first, like Megatron's rank grid): an axis's
stride is the product of the degrees inside it, so with the default order TP is innermost and
lands inside one NVLink domain. Megatron-style algorithms throughout (Narayanan et al. 2021,
Korthikanti et al. 2022, Liu et al. 2025 for MoE folding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.cost.fp8 import element_bytes, gemm_output_bytes
from planner.cost.ops import extra_tp_reductions
from planner.cost.context import cp_layer_comm
from planner.cost.experts import load_factor, remote_nodes_hit
from planner.cost.ops import GraphKey, graph_summary
from planner.graph import BlockKind, ModelGraph
from planner.hardware import GPU_LAUNCH_US, Collective, HardwareProfile
from planner.hardware import GroupSpan, group_collective_s, p2p_s
from planner.plan import Plan, Recompute, ZeroStage
from planner.scenario import EpDispatcher, JobSpec, OptimizerSharding, ShardingRuntime

# Row-parallel outputs per transformer block: attention projection and MLP (Megatron Sec. 3).
TP_COLLECTIVES_PER_BLOCK = 2
# Megatron-Core DDP bucket (distributed_data_parallel_config.bucket_size ~ 40M parameters).
DP_BUCKET_PARAMS = 40e6
# Share of a backward pass that gradient buckets can hide behind (the first bucket only becomes
# ready after the last layers' backward; Megatron overlap_grad_reduce).
DP_OVERLAP_EFFICIENCY = 0.9
# DeepSpeed stage 3 releases a sub-module's gathered parameters after use unless the same module
# runs again within this many parameters of other modules (stage3_max_reuse_distance, default 1e9;
# DeepSpeed ZeRO config docs and PartitionedParameterCoordinator._keep_for_later).
DEEPSPEED_MAX_REUSE_DISTANCE_PARAMS = 1e9


# NCCL runs one thread block (CTA) per channel on an SM for the whole collective; DGX A100/H100
# rings and trees across nodes use 16 channels (2 per NIC rail; NCCL_DEBUG=INFO "16 coll
# channels"), so 16 SMs stop doing model work while a collective overlaps compute (the
# interference DeepSeek-V3's report, Sec. 3.2.2, limits by giving its all-to-all 20 SMs).
NCCL_CHANNEL_SMS = 16


def interference_s(hidden_comm_s: float, hw: HardwareProfile) -> float:
    """Compute time lost to NCCL kernels overlapping it: the overlapped compute runs on S - c SMs."""
    if hidden_comm_s <= 0 or hw.gemm is None:
        return 0.0
    sms = hw.gemm.sm_count
    return hidden_comm_s * NCCL_CHANNEL_SMS / max(1, sms - NCCL_CHANNEL_SMS)


@dataclass(frozen=True, slots=True)
class Spans:
    """Where each parallel group of one pipeline stage lies on the cluster (cost/placement.py);
    `pp` is the stage's boundary to the next stage."""

    tp: GroupSpan
    cp: GroupSpan
    dp: GroupSpan  # dp x cp: dense gradients reduce over both (Megatron)
    pp: GroupSpan
    ep: GroupSpan
    etp: GroupSpan
    edp: GroupSpan
    cp_ring: GroupSpan  # the CP ranks that pass K,V around (all of cp for a ring, none for Ulysses)
    cp_a2a: GroupSpan  # the CP ranks that exchange heads by all-to-all (innermost in the cp axis)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerComm:
    """Communication seconds of one layer for one micro-batch, per pass, per axis."""

    tp_fwd_s: float = 0.0
    tp_bwd_s: float = 0.0
    cp_fwd_s: float = 0.0  # ring traffic (partly hidden behind attention blocks) + all-to-all
    cp_bwd_s: float = 0.0
    cp_a2a_fwd_s: float = 0.0  # the all-to-all part of cp_*: blocking (cost/context.py)
    cp_a2a_bwd_s: float = 0.0
    ep_fwd_s: float = 0.0
    ep_bwd_s: float = 0.0


def token_bytes(plan: Plan, *, job: JobSpec) -> float:
    """Bytes of one micro-batch's hidden states on one CP rank (before any TP/SP split)."""
    return plan.micro_batch_size * job.seq_len / plan.dims.cp * element_bytes(plan, job=job)


def tp_time_s(plan: Plan, *, hidden_bytes: float, span: GroupSpan, hw: HardwareProfile,
              reduce_ratio: float = 1.0) -> float:
    """One row-parallel reduction: all-reduce, or reduce-scatter + all-gather with SP (Korthikanti Sec. 4.2).
    `hidden_bytes` is the gathered activation; the reduction moves the GEMM output, `reduce_ratio` times
    as many bytes (2 for FP8 inputs gathered in FP8 beside bf16 outputs: fp8.gemm_output_bytes)."""
    if plan.sequence_parallel:
        return (group_collective_s(hw, Collective.REDUCE_SCATTER, hidden_bytes * reduce_ratio, span=span)
                + group_collective_s(hw, Collective.ALL_GATHER, hidden_bytes, span=span))
    return group_collective_s(hw, Collective.ALL_REDUCE, hidden_bytes * reduce_ratio, span=span)


def tp_exposed_s(tp_s: float, *, plan: Plan, job: JobSpec, gemm_s: float) -> float:
    """Part of a block's TP traffic left on the critical path, given the GEMM time beside it.

    Without overlap Megatron's TP collectives block. With --tp-comm-overlap (Megatron-Core with
    Transformer Engine userbuffers, sequence parallel only) each all-gather / reduce-scatter is cut
    into tp chunks pipelined with the chunks of the adjacent GEMM (Wang et al. 2023, "Overlap
    Communication with Dependent Computation via Decomposition", ASPLOS; TE CommOverlap docs): one
    chunk stays exposed as pipeline fill, and anything longer than the GEMMs shows.
    """
    tp = plan.dims.tp
    if not job.tp_comm_overlap or tp == 1 or not plan.sequence_parallel:
        return tp_s
    return max(tp_s / tp, tp_s - gemm_s)


def block_comm(plan: Plan, *, graph: ModelGraph, job: JobSpec, moe_block: bool, spans: Spans,
               hw: HardwareProfile) -> LayerComm:
    """TP, CP and EP traffic of one transformer block for one micro-batch."""
    tok = token_bytes(plan, job=job)
    hidden = tok * graph.hidden_size
    reduce_ratio = gemm_output_bytes(job) / element_bytes(plan, job=job)
    tp_one = tp_time_s(plan, hidden_bytes=hidden, span=spans.tp, hw=hw, reduce_ratio=reduce_ratio)
    tp_fwd = TP_COLLECTIVES_PER_BLOCK * tp_one
    replay = plan.recompute == Recompute.FULL
    tp_bwd = tp_fwd * (2 if replay else 1)
    tp_bwd += tp_one * extra_tp_reductions(graph, block_kind=BlockKind.MOE if moe_block else BlockKind.DENSE,
                                          fused_inputs=TP_COLLECTIVES_PER_BLOCK, hw=hw)
    cp = cp_layer_comm(plan, graph=graph, tok_bytes=tok, ring=spans.cp_ring, a2a=spans.cp_a2a, hw=hw)
    ep_fwd = (_ep_s(plan, graph=graph, tok_bytes=tok, spans=spans, hw=hw, dispatcher=job.ep_dispatcher)
              if moe_block else 0.0)
    return LayerComm(tp_fwd_s=tp_fwd, tp_bwd_s=tp_bwd, cp_fwd_s=cp.ring_fwd_s + cp.a2a_fwd_s,
                     cp_bwd_s=cp.ring_bwd_s + cp.a2a_bwd_s, cp_a2a_fwd_s=cp.a2a_fwd_s, cp_a2a_bwd_s=cp.a2a_bwd_s,
                     ep_fwd_s=ep_fwd, ep_bwd_s=ep_fwd * (2 if replay else 1))


def _ep_s(plan: Plan, *, graph: ModelGraph, tok_bytes: float, spans: Spans, hw: HardwareProfile,
          dispatcher: EpDispatcher = EpDispatcher.ALL_TO_ALL) -> float:
    """Dispatch + combine (plus expert-TP gather/scatter) of one MoE layer's forward, by dispatcher.

    all_to_all (Megatron alltoall): every routed copy (top-k per token) crosses once each way.
    all_gather (Megatron allgather): every rank gathers all tokens of its EP group and
    reduce-scatters the outputs, whatever the routing. deepep (DeepSeek-AI DeepEP, normal
    kernels): a token bound for several experts on one remote node crosses the fabric once and is
    forwarded over NVLink, so it crosses once per remote node its experts live on
    (experts.remote_nodes_hit) instead of top_k (N - 1) / N times, the all-to-all's off-node share.
    """
    moe = next(layer.moe for layer in graph.layers if layer.moe is not None)
    hidden_bytes = tok_bytes / plan.dims.tp * graph.hidden_size
    tokens_bytes = hidden_bytes * moe.top_k * load_factor(plan, moe)  # busiest receiver (experts.py)
    match dispatcher:
        case EpDispatcher.ALL_GATHER:
            gathered = hidden_bytes * spans.ep.num_ranks
            moved = (group_collective_s(hw, Collective.ALL_GATHER, gathered, span=spans.ep)
                     + group_collective_s(hw, Collective.REDUCE_SCATTER, gathered, span=spans.ep))
        case EpDispatcher.DEEPEP if spans.ep.num_ranks > spans.ep.ranks_per_domain:
            nodes = round(spans.ep.num_ranks / spans.ep.ranks_per_domain)
            copies = moe.top_k * (nodes - 1) / nodes  # off-node copies per token under all-to-all
            dedup = remote_nodes_hit(num_experts=moe.num_experts, top_k=moe.top_k, nodes=nodes) / copies
            moved = 2 * group_collective_s(hw, Collective.ALL_TO_ALL, tokens_bytes * dedup, span=spans.ep)
        case _:
            moved = 2 * group_collective_s(hw, Collective.ALL_TO_ALL, tokens_bytes, span=spans.ep)
    if plan.dims.etp == 1:
        return moved
    gathered = tokens_bytes * plan.dims.etp
    return moved + (group_collective_s(hw, Collective.ALL_GATHER, gathered, span=spans.etp)
                    + group_collective_s(hw, Collective.REDUCE_SCATTER, gathered, span=spans.etp))


def pp_p2p_s(plan: Plan, *, graph: ModelGraph, job: JobSpec, spans: Spans, hw: HardwareProfile) -> float:
    """Activations (or their gradients) crossing one stage boundary for one micro-batch.

    With TP each rank sends 1/tp and the receiver all-gathers over NVLink (Narayanan Sec. 4.1).
    """
    if plan.dims.pp == 1:
        return 0.0
    size = token_bytes(plan, job=job) * graph.hidden_size / plan.dims.tp
    return p2p_s(hw, size, span=spans.pp)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataParallelComm:
    """Gradient/parameter synchronisation of one stage per step: total and exposed seconds."""

    total_s: float
    exposed_s: float


def dp_step_comm(plan: Plan, *, dense_params: float, expert_params: float, job: JobSpec, spans: Spans,
                 hw: HardwareProfile, bwd_window_s: float, fwd_window_s: float,
                 num_micro_batches: int = 1) -> DataParallelComm:
    """Bucketed gradient reduction overlapped with the last micro-batch's backward.

    Gradients move job.grad_reduce_bytes per element (fp32 main grads under Megatron bf16),
    parameters the compute precision. ZeRO-0: all-reduce. ZeRO-1/2: reduce-scatter, then the updated shards are all-gathered,
    overlapped with the next forward (Megatron overlap_param_gather); ZeroRedundancyOptimizer's ZeRO-1
    (job.zero1_runtime) all-reduces like ZeRO-0 and broadcasts the shards inside step(), after the
    backward and before the next forward, so nothing hides them. ZeRO-1 keeps the whole
    gradient buffer and reduces once per step (Megatron distributed optimizer); ZeRO-2 keeps only
    its shard, so every micro-batch's backward reduce-scatters (DeepSpeed stage 2 reduces in its
    backward hooks at every micro-step; FSDP SHARD_GRAD_OP outside no_sync): the earlier ones hide
    behind the next micro-batch (see _zero2_earlier_s). ZeRO-3 is per micro-batch (see
    zero3_layer_comm) and adds nothing here.
    """
    if plan.zero_stage == ZeroStage.PARAMETERS:
        return DataParallelComm(total_s=0.0, exposed_s=0.0)
    grad_b, param_b = job.grad_reduce_bytes, element_bytes(plan, job=job)
    zero_redundancy = plan.zero_stage == ZeroStage.OPTIMIZER and job.zero1_runtime == OptimizerSharding.ZERO_REDUNDANCY
    reduce_s, gather_s = 0.0, 0.0
    for params, span in ((dense_params, spans.dp), (expert_params, spans.edp)):
        if span.num_ranks <= 1 or params <= 0:
            continue
        # one collective per bucket: each pays its own latency (ring steps grow with the ranks)
        nb = max(1, math.ceil(params / DP_BUCKET_PARAMS))
        reduce = Collective.ALL_REDUCE if plan.zero_stage == ZeroStage.NONE or zero_redundancy else Collective.REDUCE_SCATTER
        reduce_s += nb * group_collective_s(hw, reduce, params * grad_b / nb, span=span)
        if plan.zero_stage != ZeroStage.NONE:  # ZeroRedundancyOptimizer's broadcasts deliver as many bytes
            gather_s += nb * group_collective_s(hw, Collective.ALL_GATHER, params * param_b / nb, span=span)
    buckets = max(1, math.ceil((dense_params + expert_params) / DP_BUCKET_PARAMS))
    # A runtime that reduces after the backward (Megatron-LM local DDP before overlap_grad_reduce)
    # or gathers before the next forward (no overlap_param_gather) leaves that traffic exposed.
    bwd_window_s = bwd_window_s if job.dp_comm_overlap else 0.0
    fwd_window_s = fwd_window_s if job.param_gather_overlap and not zero_redundancy else 0.0
    exposed = max(reduce_s - DP_OVERLAP_EFFICIENCY * bwd_window_s, reduce_s / buckets)
    exposed += max(gather_s - DP_OVERLAP_EFFICIENCY * fwd_window_s, gather_s / buckets) if gather_s else 0.0
    earlier_total, earlier_exposed = _zero2_earlier_s(plan, reduce_s, num_micro_batches=num_micro_batches,
                                                      window_s=bwd_window_s + fwd_window_s)
    total = reduce_s + gather_s + earlier_total
    exposed += earlier_exposed
    exposed += interference_s(total - exposed, hw)
    return DataParallelComm(total_s=total, exposed_s=exposed)


def _zero2_earlier_s(plan: Plan, reduce_s: float, *, num_micro_batches: int, window_s: float) -> tuple[float, float]:
    """(total, exposed) seconds of the reduce-scatters ZeRO-2 runs for the micro-batches before the
    last: each overlaps the following micro-batch's forward and backward on this stage."""
    if plan.zero_stage != ZeroStage.GRADIENTS or num_micro_batches <= 1 or reduce_s <= 0:
        return 0.0, 0.0
    earlier = num_micro_batches - 1
    return earlier * reduce_s, earlier * max(0.0, reduce_s - DP_OVERLAP_EFFICIENCY * window_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Zero3Comm:
    """ZeRO-3 traffic of one layer for one micro-batch and what of it stays on the critical path."""

    fwd_s: float  # parameter all-gather before the forward
    bwd_s: float  # all-gathers for the backward (and a recomputed forward) plus the gradient reduce-scatter
    exposed_fwd_s: float
    exposed_bwd_s: float


def zero3_layer_comm(params_local: float, *, plan: Plan, job: JobSpec, span: GroupSpan, hw: HardwareProfile,
                     fwd_window_s: float, bwd_window_s: float, modules: int = 1) -> Zero3Comm:
    """FSDP / ZeRO-3 traffic of one layer for one micro-batch, prefetched behind its compute windows.

    `params_local` is the layer's parameters on this TP/EP rank before sharding over `span`;
    `bwd_window_s` is the layer's backward compute including any recomputed forward. Gathers move
    the compute precision, the reduce-scatter job.grad_reduce_bytes per element. FSDP gathers and
    reduce-scatters one unit (the layer) per pass; DeepSpeed 2021 runs one blocking collective
    per parameter-holding sub-module (`modules` of them, see deepspeed_2021_collective_s)
    with nothing overlapped. FSDP (and FSDP1, whatever its backward prefetch: ShardingRuntime.FSDP1)
    runs a layer's gathers and the reduce-scatter on one NCCL stream, so they share its backward.
    """
    size = params_local * element_bytes(plan, job=job)
    grads = params_local * job.grad_reduce_bytes
    gathers_bwd = 1.0 + _recompute_regather_share(params_local, plan=plan, job=job)
    if job.zero3_runtime == ShardingRuntime.DEEPSPEED_2021:
        gather = deepspeed_2021_collective_s(hw, Collective.ALL_GATHER, size, span=span, modules=modules)
        scatter = deepspeed_2021_collective_s(hw, Collective.REDUCE_SCATTER, grads, span=span, modules=modules)
        bwd = gathers_bwd * gather + scatter
        return Zero3Comm(fwd_s=gather, bwd_s=bwd, exposed_fwd_s=gather, exposed_bwd_s=bwd)
    gather = group_collective_s(hw, Collective.ALL_GATHER, size, span=span)
    scatter = group_collective_s(hw, Collective.REDUCE_SCATTER, grads, span=span)
    bwd = gathers_bwd * gather + scatter
    exposed_fwd = max(0.0, gather - fwd_window_s)
    exposed_bwd = max(0.0, bwd - bwd_window_s)
    return Zero3Comm(fwd_s=gather, bwd_s=bwd, exposed_fwd_s=exposed_fwd + interference_s(gather - exposed_fwd, hw),
                     exposed_bwd_s=exposed_bwd + interference_s(bwd - exposed_bwd, hw))


def deepspeed_2021_collective_s(hw: HardwareProfile, collective: Collective, size_bytes: float, *,
                                span: GroupSpan, modules: int) -> float:
    """One layer's gather (or gradient reduce-scatter) under DeepSpeed 0.3.x stage 3, on the critical path.

    microsoft/DeepSpeed v0.3.13 runtime/zero: fetch_sub_module gathers each sub-module's
    parameters with one torch.distributed.all_gather per parameter and then blocks
    (_synchronize_communication: comm_stream.synchronize() and torch.cuda.synchronize()), and
    _allgather_param itself calls torch.cuda.synchronize(); the prefetcher was disabled whenever
    the module order differed from the first step's trace (DeepSpeed PR #873, 2021-03), and
    gradients are reduce-scattered per parameter on the compute stream (overlap_comm false). So
    every sub-module pays its own collective (ring latency over all n ranks) and nothing hides.
    Both calls pass tensor lists, which torch's ProcessGroupNCCL flattens with one copy kernel per
    rank (n launches, GPU_LAUNCH_US each; DeepSpeed issue #1069 replaced them with an in-place
    all-gather); the device syncs leave the host launching them with the GPU idle. One
    collective per module is a lower bound where a module also holds a bias.
    """
    if span.num_ranks <= 1 or size_bytes <= 0:
        return 0.0
    launch_s = (hw.host.fwd_us_per_op if hw.host is not None else GPU_LAUNCH_US) * 1e-6
    m = max(1, modules)
    return m * (group_collective_s(hw, collective, size_bytes / m, span=span) + span.num_ranks * launch_s)


@lru_cache(maxsize=32)
def param_modules(key: GraphKey) -> dict[str, int]:
    """Per block kind: sub-modules of its first layer that hold parameters, i.e. the units
    DeepSpeed stage 3 fetches one by one; 1 when the graph carries no operators. Owners are the
    traced ops' modules with parameter bytes, leaves only: a parent whose op reads a buffer (the
    attention's RoPE table) owns no parameter of its own."""
    first = graph_summary(key).first
    names = {layer.name: kind for kind, layer in first.items()}
    owners: dict[str, set[str]] = {kind: set() for kind in first}
    for node, data in key.graph.dag.nodes(data=True):
        kind = names.get(str(node).split("/", 1)[0])
        op = data.get("op")
        if kind is not None and op is not None and op.param_bytes > 0:
            owners[kind].add(op.module)
    leaves = {kind: [m for m in mods if not any(o.startswith(m + ".") for o in mods)] for kind, mods in owners.items()}
    return {kind: max(1, len(mods)) for kind, mods in leaves.items()}


def _recompute_regather_share(params_local: float, *, plan: Plan, job: JobSpec) -> float:
    """Share of a layer's parameters gathered a second time in the backward for its recomputed forward.

    An FSDP unit wraps the checkpointed block, so recompute and backward share one gather. DeepSpeed
    releases each sub-module after its recomputed forward unless it is reused within the reuse
    distance; the reuse comes after the rest of the layer has been recomputed and back-propagated,
    about twice the layer's parameters that follow the module, so only the last D/2 parameters of
    the layer stay (parameters taken as spread evenly over the layer's modules).
    """
    if plan.recompute != Recompute.FULL or params_local <= 0:
        return 0.0
    match job.zero3_runtime:
        case ShardingRuntime.FSDP | ShardingRuntime.FSDP1:
            return 0.0
        case ShardingRuntime.DEEPSPEED_2021:
            return max(0.0, 1.0 - DEEPSPEED_MAX_REUSE_DISTANCE_PARAMS / (2.0 * params_local))
