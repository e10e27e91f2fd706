"""Per-GPU memory of each pipeline stage as named terms.

Model states follow Rajbhandari et al. 2020 (ZeRO: 2 + 4 + 12 bytes per parameter for bf16
weights, fp32 main gradients and Adam states, sharded by stage 1/2/3 over the data-parallel
group); activations follow Korthikanti et al. 2022 (per layer sbh(10 + 24/t + 5as/(ht)) without
SP, /t everywhere with SP, 34sbh/t with selective and 2sbh with full recompute), taken from the
traced graph and multiplied by the micro-batches the schedule keeps in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.compute import Split
from planner.cost.ops import GraphKey, Region, layer_ops
from planner.graph import Layer, LayerKind, ModelGraph
from planner.plan import Plan, Recompute, Schedule, ZeroStage
from planner.scenario import JobSpec

GIB = 2**30
# Caching-allocator fragmentation on the churned (activation and buffer) memory: PyTorch's
# reserved/allocated ratio is typically 1.05-1.15 in Megatron runs; we take the low end.
ALLOCATOR_FRAGMENTATION = 0.07
# CUDA context, cuBLAS/NCCL workspaces: outside the caching allocator, taken off capacity.
RESERVED_BYTES = 1.0 * GIB


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerActivation:
    """Saved bytes of one layer for the traced sample, by where they live."""

    replicated: float  # kept whole on every TP rank unless sequence parallel is on
    split: float  # divided by TP (heads, columns)
    expert: float  # routed-expert activations
    eager_extra: float  # the s^2 attention terms that flash attention / selective recompute drop
    input_bytes: float


def layer_activation(graph: ModelGraph, layer: Layer) -> LayerActivation:
    totals = {Region.TP: 0.0, Region.SP: 0.0, Region.EXPERT: 0.0}
    for op in layer_ops(GraphKey(graph))[layer.block_kind]:
        totals[op.saved_region] += op.saved_bytes
    scale = layer.saved_bytes / max(sum(totals.values()), 1.0)  # ops of a representative layer
    return LayerActivation(replicated=totals[Region.SP] * scale, split=totals[Region.TP] * scale,
                           expert=totals[Region.EXPERT] * scale,
                           eager_extra=max(0.0, layer.saved_bytes - layer.saved_bytes_flash),
                           input_bytes=layer.input_bytes)


def activation_bytes(act: LayerActivation, *, split: Split, flash: bool, recompute: Recompute) -> float:
    """Bytes one layer keeps for one micro-batch between its forward and backward."""
    sp_div = split.tp if split.sp else 1
    if recompute == Recompute.FULL:
        return act.input_bytes * split.batch_scale / (split.cp * sp_div)
    split_bytes = act.split
    if flash or recompute == Recompute.SELECTIVE:
        split_bytes -= act.eager_extra
    per_gpu = act.replicated / sp_div + split_bytes / split.tp + act.expert * split.imbalance / split.tp
    return per_gpu * split.batch_scale / split.cp


def in_flight(plan: Plan, *, stage: int, num_micro_batches: int) -> float:
    """Micro-batches of activations a stage holds at its peak (in units of its whole stage)."""
    p, m, v = plan.dims.pp, num_micro_batches, plan.virtual_stages
    match plan.schedule:
        case Schedule.GPIPE:
            return float(m)
        case Schedule.INTERLEAVED_1F1B:
            chunks = min(m * v, 2 * (p - stage - 1) + (v - 1) * p + 1)
            return chunks / v
        case Schedule.ONE_F_ONE_B | Schedule.ZERO_BUBBLE:
            return float(min(p - stage, m))


@dataclass(frozen=True, slots=True, kw_only=True)
class StageParams:
    """Parameters one GPU of a stage holds before ZeRO sharding (after TP/EP splits)."""

    dense: float
    expert: float
    largest_layer: float


def stage_params(plan: Plan, layers: list[Layer]) -> StageParams:
    d = plan.dims
    dense = expert = largest = 0.0
    for layer in layers:
        layer_expert = layer.moe.num_experts * layer.moe.expert_params if layer.moe else 0.0
        layer_dense = (layer.num_params - layer_expert) / d.tp
        layer_expert /= d.ep * d.etp
        dense += layer_dense
        expert += layer_expert
        largest = max(largest, layer_dense + layer_expert)
    return StageParams(dense=dense, expert=expert, largest_layer=largest)


def model_state_terms(plan: Plan, params: StageParams, *, job: JobSpec) -> dict[str, float]:
    """weights / gradients / optimizer bytes on one GPU, sharded per ZeRO stage."""
    d, z = plan.parallel_dims, plan.zero_stage
    sharded = params.dense / (d.dp * d.cp) + params.expert / d.edp
    whole = params.dense + params.expert
    opt = job.optimizer
    return {
        "weights": (sharded if z >= ZeroStage.PARAMETERS else whole) * job.precision.bytes,
        "gradients": (sharded if z >= ZeroStage.GRADIENTS else whole) * opt.grad_bytes_per_param,
        "optimizer": (sharded if z >= ZeroStage.OPTIMIZER else whole) * opt.state_bytes,
    }


def comm_buffer_bytes(plan: Plan, params: StageParams, *, graph: ModelGraph, job: JobSpec) -> float:
    """Buffers that live beside activations: ZeRO-3 prefetched layers, SP gathers, pipeline p2p."""
    hidden = plan.micro_batch_size * job.seq_len / plan.dims.cp * graph.hidden_size * job.precision.bytes
    total = 0.0
    if plan.zero_stage == ZeroStage.PARAMETERS:
        total += 2 * params.largest_layer * job.precision.bytes  # current + prefetched layer
    if plan.dims.tp > 1:
        total += 2 * hidden  # all-gathered input / all-reduce output
    if plan.dims.pp > 1:
        total += 4 * hidden / plan.dims.tp  # send + recv, forward and backward
    return total


def stage_memory(plan: Plan, *, graph: ModelGraph, job: JobSpec, split: Split, chunks: list[list[Layer]],
                 stage: int, num_micro_batches: int, flash: bool = True) -> dict[str, float]:
    """Named memory terms (bytes) of one GPU of pipeline stage `stage`."""
    p = plan.dims.pp
    layers = [layer for c in range(stage, len(chunks), p) for layer in chunks[c]]
    params = stage_params(plan, layers)
    terms = model_state_terms(plan, params, job=job)
    recomputable = [layer for layer in layers if layer.kind == LayerKind.BLOCK]
    per_mb = sum(activation_bytes(layer_activation(graph, layer), split=split, flash=flash,
                                  recompute=plan.recompute) for layer in recomputable)
    per_mb += sum(activation_bytes(layer_activation(graph, layer), split=split, flash=flash,
                                   recompute=Recompute.NONE) for layer in layers if layer.kind != LayerKind.BLOCK)
    acts = per_mb * in_flight(plan, stage=stage, num_micro_batches=num_micro_batches)
    if plan.recompute == Recompute.FULL and recomputable:
        acts += max(activation_bytes(layer_activation(graph, layer), split=split, flash=flash,
                                     recompute=Recompute.NONE) for layer in recomputable)
    terms["activations"] = acts
    terms["comm_buffers"] = comm_buffer_bytes(plan, params, graph=graph, job=job)
    terms["allocator_margin"] = ALLOCATOR_FRAGMENTATION * (acts + terms["comm_buffers"])
    return terms


def model_state_lower_bound(plan: Plan, *, chunks: list[list[Layer]], job: JobSpec) -> float:
    """Largest stage's weights + gradients + optimizer: a floor on peak memory for pruning."""
    p = plan.dims.pp
    best = 0.0
    for stage in range(p):
        layers = [layer for c in range(stage, len(chunks), p) for layer in chunks[c]]
        best = max(best, sum(model_state_terms(plan, stage_params(plan, layers), job=job).values()))
    return best
