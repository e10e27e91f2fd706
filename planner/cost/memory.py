"""Per-GPU memory of each pipeline stage as named terms.

Model states follow Rajbhandari et al. 2020 (ZeRO: 2 + 4 + 12 bytes per parameter for bf16
weights, fp32 main gradients and Adam states, sharded by stage 1/2/3 over the data-parallel
group); activations follow Korthikanti et al. 2022 (per layer sbh(10 + 24/t + 5as/(ht)) without
SP, /t everywhere with SP, 34sbh/t with selective and 2sbh with full recompute), taken from the
traced graph and multiplied by the micro-batches the schedule keeps in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from planner.cost.compute import Split
from planner.cost.context import cp_buffer_bytes
from planner.cost.fp8 import element_bytes, weight_cache_bytes_per_param
from planner.cost.offload import gpu_state_terms, offloaded_bytes
from planner.cost.terms import MemoryTerm
from planner.cost.ops import GraphKey, OpCost, Region, graph_summary, layer_ops
from planner.graph import Layer, LayerKind, ModelGraph, OpKind
from planner.plan import OffloadState, Plan, Recompute, Schedule, ZeroStage
from planner.scenario import GIB, JobSpec, Precision

# Caching-allocator fragmentation on the churned (activation and buffer) memory: PyTorch's
# reserved/allocated ratio is typically 1.05-1.15 in Megatron runs; we take the low end.
ALLOCATOR_FRAGMENTATION = 0.07
# CUDA context, cuBLAS/NCCL workspaces: outside the caching allocator, taken off capacity.
RESERVED_BYTES = 1.0 * GIB
FP32_MASTER_BYTES = 4.0  # an fp32 copy of each parameter


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerActivation:
    """Saved bytes of one layer for the traced sample, by where they live."""

    replicated: float  # kept whole on every TP rank unless sequence parallel is on
    split: float  # divided by TP (heads, columns)
    expert: float  # routed-expert activations
    eager_extra: float  # the s^2 attention terms that flash attention / selective recompute drop
    input_bytes: float
    # bytes an FP8 stack that saves its cast GEMM inputs (FrameworkRuntime.fp8_saved_inputs) keeps
    # less: replicated unless SP (the norm outputs feeding column-parallel GEMMs), split by TP
    fp8_saving_replicated: float = 0.0
    fp8_saving_split: float = 0.0


def layer_activation(graph: ModelGraph, layer: Layer) -> LayerActivation:
    """Saved bytes of `layer` split by region, from its block kind's reduced operators."""
    totals = {Region.TP: 0.0, Region.SP: 0.0, Region.EXPERT: 0.0}
    ops = layer_ops(GraphKey(graph))[layer.block_kind]
    for op in ops:
        totals[op.saved_region] += op.saved_bytes * op.count
    scale = layer.saved_bytes / max(sum(totals.values()), 1.0)  # ops of a representative layer
    replicated, split = _fp8_input_saving(ops, heads=graph.num_attention_heads)
    return LayerActivation(replicated=totals[Region.SP] * scale, split=totals[Region.TP] * scale,
                           expert=totals[Region.EXPERT] * scale,
                           eager_extra=max(0.0, layer.saved_bytes - layer.saved_bytes_flash),
                           input_bytes=layer.input_bytes, fp8_saving_replicated=replicated, fp8_saving_split=split)


_LINEAR_KINDS = (OpKind.MATMUL, OpKind.EXPERT_MATMUL)


def _fp8_input_saving(ops: tuple[OpCost, ...], *, heads: int) -> tuple[float, float]:
    """Bytes saved per traced sample when FP8 linears keep their inputs in 1 byte instead of 2
    (Transformer Engine Linear/LayerNormLinear: the cast input is what the wgrad reads).

    Each row-parallel GEMM closes a block opened by column-parallel GEMMs that read one norm output
    (m x n of the row-parallel call: the hidden size), kept only for their wgrad: 1 byte less. The
    row-parallel GEMM's own input (m x k) is kept only for its wgrad too (the MLP's activation
    output: 1 byte less), except the attention output, which the flash kernel keeps in 16 bits for
    its own backward, so the FP8 copy is 1 byte more (the projection reads the attention core's
    heads: k = heads x head_dim). Routed experts run the same pair per expert in one TE GroupedLinear
    (grouped_linear.py keeps each expert's quantized input for its wgrad): the dispatched tokens and
    the expert activation output each keep 1 byte less."""
    attention = next((op for op in ops if op.kind == OpKind.ATTENTION and op.dims[2]), None)
    query_width = heads * attention.dims[2] if attention is not None else -1
    replicated = split = 0.0
    for op in ops:
        if op.kind not in _LINEAR_KINDS or not (op.fp8 and op.row_parallel and op.dims[2]):
            continue
        m, n, k = op.dims
        replicated += op.count * m * n
        split += op.count * m * k * (-1.0 if k == query_width else 1.0)
    return replicated, split


def activation_bytes(act: LayerActivation, *, split: Split, flash: bool, recompute: Recompute) -> float:
    """Bytes one layer keeps for one micro-batch between its forward and backward."""
    sp_div = split.tp if split.sp else 1
    if recompute == Recompute.FULL:
        return act.input_bytes * split.batch_scale / (split.cp * sp_div)
    split_bytes, replicated = act.split, act.replicated
    if flash or recompute == Recompute.SELECTIVE:
        split_bytes -= act.eager_extra
    if split.fp8_saved_inputs:
        replicated -= act.fp8_saving_replicated
        split_bytes -= act.fp8_saving_split
    per_gpu = replicated / sp_div + split_bytes / split.tp + act.expert * split.imbalance / split.tp
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
class KindMemory:
    """Per-GPU memory inputs of one layer of a block kind (layers of one kind are identical)."""

    dense_params: float  # after the TP split
    expert_params: float  # after the EP x ETP split
    act_bytes: float  # kept per micro-batch under the plan's recompute
    act_full_bytes: float  # kept per micro-batch with nothing recomputed (recompute working set)
    recomputed: bool


@lru_cache(maxsize=32)
def kind_activations(key: GraphKey) -> dict[str, LayerActivation]:
    """layer_activation of each block kind's first layer, once per graph."""
    return {kind: layer_activation(key.graph, layer) for kind, layer in graph_summary(key).first.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class KindParams:
    """Parameters of one layer of a block kind on one GPU, after the TP and EP x ETP splits."""

    dense_params: float
    expert_params: float


def kind_params(graph: ModelGraph, plan: Plan) -> dict[str, KindParams]:
    d = plan.dims
    out = {}
    for kind, layer in graph_summary(GraphKey(graph)).first.items():
        expert = layer.moe.num_experts * layer.moe.expert_params if layer.moe else 0.0
        params = layer.num_params + _tied_head_copy(graph, layer, pp=1 if plan.vocab_parallel else d.pp)
        out[kind] = KindParams(dense_params=(params - expert) / d.tp, expert_params=expert / (d.ep * d.etp))
    return out


def kind_memory(graph: ModelGraph, plan: Plan, *, split: Split, flash: bool) -> dict[str, KindMemory]:
    key = GraphKey(graph)
    first, acts = graph_summary(key).first, kind_activations(key)
    out = {}
    for kind, params in kind_params(graph, plan).items():
        block = first[kind].kind == LayerKind.BLOCK
        full = activation_bytes(acts[kind], split=split, flash=flash, recompute=Recompute.NONE)
        kept = activation_bytes(acts[kind], split=split, flash=flash, recompute=plan.recompute) if block else full
        out[kind] = KindMemory(dense_params=params.dense_params, expert_params=params.expert_params, act_bytes=kept,
                               act_full_bytes=full, recomputed=block and plan.recompute == Recompute.FULL)
    return out


def _tied_head_copy(graph: ModelGraph, layer: Layer, *, pp: int) -> float:
    """With tied embeddings and pp > 1 the last stage keeps its own copy of the embedding matrix
    for the LM head (Megatron; the two copies' gradients are all-reduced), the graph counts it once."""
    table = graph.vocab_size * graph.hidden_size
    tied = layer.kind == LayerKind.HEAD and layer.num_params < table
    return float(table) if tied and pp > 1 else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StageParams:
    """Parameters one GPU of a stage holds before ZeRO sharding (after TP/EP splits)."""

    dense: float
    expert: float
    largest_layer: float


def stage_params(kinds: dict[str, KindMemory] | dict[str, KindParams], counts: Counter[str]) -> StageParams:
    present = [kinds[k] for k, n in counts.items() if n]
    return StageParams(dense=sum(kinds[k].dense_params * n for k, n in counts.items()),
                       expert=sum(kinds[k].expert_params * n for k, n in counts.items()),
                       largest_layer=max((m.dense_params + m.expert_params for m in present), default=0.0))


def stage_counts(chunk_counts: list[Counter[str]], *, pp: int) -> list[Counter[str]]:
    """Block kinds on each pipeline rank (chunk c runs on rank c % pp)."""
    stages = [Counter() for _ in range(pp)]
    for c, counts in enumerate(chunk_counts):
        stages[c % pp].update(counts)
    return stages


def model_state_terms(plan: Plan, params: StageParams, *, job: JobSpec) -> dict[str, float]:
    """weights / gradients / optimizer bytes on one GPU, sharded per ZeRO stage."""
    d, z = plan.dims, plan.zero_stage
    sharded = params.dense / (d.dp * d.cp) + params.expert / d.edp
    whole = params.dense + params.expert
    opt = job.optimizer
    weights = sharded if z >= ZeroStage.PARAMETERS else whole
    recipe = plan.fp8_recipe if job.precision == Precision.FP8 else None  # bf16 weights + FP8 copies (fp8.py)
    weight_bytes, state_bytes = element_bytes(plan, job=job), opt.state_bytes
    if z >= ZeroStage.PARAMETERS and job.zero3_runtime.fsdp and weight_bytes < FP32_MASTER_BYTES:
        # FSDP mixed precision keeps one sharded copy, the fp32 parameter the optimizer steps, and
        # casts to 16 bits only in the all-gather (Zhao et al. 2023, PyTorch FSDP, VLDB, Sec. 4.4;
        # FSDP2 MixedPrecisionPolicy.param_dtype): the master that state_bytes counts is that copy.
        weight_bytes, state_bytes = FP32_MASTER_BYTES, max(0.0, state_bytes - FP32_MASTER_BYTES)
    terms = {
        MemoryTerm.WEIGHTS: weights * weight_bytes,
        MemoryTerm.GRADIENTS: (sharded if z >= ZeroStage.GRADIENTS else whole) * opt.grad_bytes_per_param,
        MemoryTerm.OPTIMIZER: (sharded if z >= ZeroStage.OPTIMIZER else whole) * state_bytes,
    }
    return terms | ({MemoryTerm.FP8_WEIGHTS: weights * weight_cache_bytes_per_param(recipe)} if recipe else {})


def _gpu_states(plan: Plan, params: StageParams, *, job: JobSpec) -> dict[str, float]:
    """model_state_terms left on the GPU once the plan's offloaded states move (offload.py)."""
    return gpu_state_terms(model_state_terms(plan, params, job=job), plan,
                           largest_layer_bytes=params.largest_layer * element_bytes(plan, job=job))


def comm_buffer_bytes(plan: Plan, params: StageParams, *, hidden_size: int, job: JobSpec) -> float:
    """Buffers that live beside activations: ZeRO-3 prefetched layers, SP gathers, pipeline p2p."""
    hidden = plan.micro_batch_size * job.seq_len / plan.dims.cp * hidden_size * element_bytes(plan, job=job)
    total = 0.0
    if plan.zero_stage == ZeroStage.PARAMETERS:
        total += 2 * params.largest_layer * element_bytes(plan, job=job)  # current + prefetched layer
    if plan.dims.tp > 1:
        total += 2 * hidden  # all-gathered input / all-reduce output
    if plan.dims.pp > 1:
        total += 4 * hidden / plan.dims.tp  # send + recv, forward and backward
    return total


@dataclass(frozen=True, slots=True)
class _StageBase:
    """What a stage's memory terms need from its block kinds (shared by stages holding the same ones)."""

    model_states: dict[str, float]
    act_per_micro_batch: float
    replayed: float  # full activations of the layer being recomputed (full recompute)
    comm_buffers: float


def _stage_base(plan: Plan, *, kinds: dict[str, KindMemory], counts: Counter[str], hidden_size: int,
                job: JobSpec) -> _StageBase:
    params = stage_params(kinds, counts)
    replayed = [kinds[k].act_full_bytes for k, n in counts.items() if n and kinds[k].recomputed]
    return _StageBase(model_states=_gpu_states(plan, params, job=job),
                      act_per_micro_batch=sum(kinds[k].act_bytes * n for k, n in counts.items()),
                      replayed=max(replayed, default=0.0),
                      comm_buffers=comm_buffer_bytes(plan, params, hidden_size=hidden_size, job=job))


def _stage_terms(plan: Plan, base: _StageBase, *, stage: int, num_micro_batches: int) -> dict[str, float]:
    acts = base.act_per_micro_batch * in_flight(plan, stage=stage, num_micro_batches=num_micro_batches)
    acts += base.replayed  # the layer being recomputed holds its full activations
    return base.model_states | {MemoryTerm.ACTIVATIONS: acts, MemoryTerm.COMM_BUFFERS: base.comm_buffers,
                                MemoryTerm.ALLOCATOR_MARGIN: ALLOCATOR_FRAGMENTATION * (acts + base.comm_buffers)}


def stage_memory(plan: Plan, *, kinds: dict[str, KindMemory], counts: Counter[str], hidden_size: int, job: JobSpec,
                 stage: int, num_micro_batches: int) -> dict[str, float]:
    """Named memory terms (bytes) of one GPU of pipeline stage `stage`."""
    base = _stage_base(plan, kinds=kinds, counts=counts, hidden_size=hidden_size, job=job)
    return _stage_terms(plan, base, stage=stage, num_micro_batches=num_micro_batches)


def pipeline_memory(plan: Plan, *, kinds: dict[str, KindMemory], stages: list[Counter[str]], hidden_size: int,
                    job: JobSpec, num_micro_batches: int,
                    classes: tuple[int, ...] | None = None) -> list[dict[str, float]]:
    """stage_memory of every pipeline stage; stages holding the same block kinds share the
    count-dependent part, so the per-stage work is the in-flight micro-batches alone. `classes`:
    per stage, the first stage with the same counts (cost._Counts), so the key is an int."""
    bases: dict[object, _StageBase] = {}
    out = []
    for stage, counts in enumerate(stages):
        key = tuple(counts.items()) if classes is None else classes[stage]
        if key not in bases:
            bases[key] = _stage_base(plan, kinds=kinds, counts=counts, hidden_size=hidden_size, job=job)
        out.append(_stage_terms(plan, bases[key], stage=stage, num_micro_batches=num_micro_batches))
    return out


def plan_memory(graph: ModelGraph, plan: Plan, *, job: JobSpec, split: Split, chunk_counts: list[Counter[str]],
                num_micro_batches: int, flash: bool = True) -> list[dict[str, float]]:
    """stage_memory of every pipeline stage."""
    kinds = kind_memory(graph, plan, split=split, flash=flash)
    return pipeline_memory(plan, kinds=kinds, stages=stage_counts(chunk_counts, pp=plan.dims.pp),
                           hidden_size=graph.hidden_size, job=job, num_micro_batches=num_micro_batches)


def model_state_lower_bound(plan: Plan, *, kinds: dict[str, KindMemory] | dict[str, KindParams],
                            stages: list[Counter[str]], job: JobSpec) -> float:
    """Largest stage's weights + gradients + optimizer: a floor on peak memory for pruning.
    `stages` are the block-kind counts per pipeline rank; ranks holding the same ones are priced once."""
    distinct = {tuple(counts.items()): counts for counts in stages}
    return max(sum(_gpu_states(plan, stage_params(kinds, counts), job=job).values())
               for counts in distinct.values())


def long_context_terms(plan: Plan, memory: list[dict[str, float]], *, stages: list[Counter[str]],
                       kinds: dict[str, KindMemory], graph: ModelGraph,
                       job: JobSpec) -> tuple[list[dict[str, float]], dict[str, float]]:
    """CP buffers (context.py) and offloaded activations (offload.py) on each stage's terms; the
    bytes per GPU each offload tier holds (the largest stage's)."""
    tok_bytes = plan.micro_batch_size * job.seq_len / plan.dims.cp * element_bytes(plan, job=job)
    cp_buf = cp_buffer_bytes(plan, graph=graph, tok_bytes=tok_bytes)
    if not cp_buf and not plan.offload:  # nothing to add (most plans the search prices)
        return memory, {}
    out, held = [], {}
    for terms, counts in zip(memory, stages, strict=True):
        if plan.offload:
            states = model_state_terms(plan, stage_params(kinds, counts), job=job) | {
                MemoryTerm.ACTIVATIONS: terms[MemoryTerm.ACTIVATIONS]}
            for tier, b in offloaded_bytes(states, plan).items():
                held[tier.value] = max(held.get(tier.value, 0.0), b)
        terms = terms | ({MemoryTerm.CP_BUFFERS: cp_buf} if cp_buf else {})
        if OffloadState.ACTIVATIONS in plan.offload:
            layer = max(k.act_bytes for k in kinds.values())
            terms = terms | {MemoryTerm.ACTIVATIONS: min(terms[MemoryTerm.ACTIVATIONS], 2 * layer)}  # in use + in transfer
        out.append(terms)
    return out, held
