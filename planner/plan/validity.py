"""Plan validity: every reason a plan (or a bare layout) cannot run a workload, in one function.

The search prunes layouts with it, `estimate` and the executor refuse plans with it; the
executor adds only the limits of its own runtime (executor/parallelize.check_supported).
Rules (Megatron-LM, Narayanan et al. 2021; MoE folding, Liu et al. 2025): the degrees multiply to
the world size; tp divides the attention heads and the KV heads (Megatron-LM core_v0.15.0
TransformerConfig: num_query_groups must be a multiple of tensor_model_parallel_size); pp
(times virtual stages) does not exceed the layers; 2*cp divides the sequence (load-balanced
causal chunks); dp*micro-batch divides the global batch; ep divides the experts and etp the
expert FFN width; a Ulysses all-to-all degree divides heads/tp; sequence parallelism needs tp > 1
and seq_len/cp divisible by tp; 1F1B-type
schedules need at least as many micro-batches as stages (torch.distributed.pipelining refuses
fewer), interleaved ones a multiple of pp.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from planner.plan.dims import ParallelDims
from planner.plan.schema import Plan, Schedule


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The numbers of a workload that a plan must fit (built by Scenario.plan_target())."""

    world_size: int
    num_layers: int
    num_heads: int
    kv_heads: int
    seq_len: int
    global_batch: int
    num_experts: int = 0  # 0 for a dense model
    expert_ffn: int = 0
    num_moe_layers: int = 0
    gpus_per_node: int = 0  # 0: unknown (a device mapping is then only checked for its own shape)
    fp8: bool = False  # the job trains in fp8 (a plan's fp8_recipe needs it)
    documents: bool = False  # the job packs variable-length documents (a plan's balance needs it)


class HasTarget(Protocol):
    def plan_target(self) -> Target: ...


def problems(plan: Plan | ParallelDims, target: Target | HasTarget) -> list[str]:
    """Every reason `plan` cannot run `target`, one line each; [] when it can.

    A bare ParallelDims is checked for the layout rules only (the search prunes with it before
    any knob is chosen); a Plan is checked for those and for its knobs.
    """
    t = target if isinstance(target, Target) else target.plan_target()
    dims = plan.dims if isinstance(plan, Plan) else plan
    found = _dims_problems(dims, t)
    if isinstance(plan, Plan):
        found += _knob_problems(plan, t)
    return found


def check(plan: Plan, target: Target | HasTarget) -> None:
    """ValueError listing every problem (for estimate and the executor)."""
    found = problems(plan, target)
    if found:
        raise ValueError("; ".join(found))


def _dims_problems(d: ParallelDims, t: Target) -> list[str]:
    out = []
    if d.world_size != t.world_size:
        out.append(f"dims: dp*tp*pp*cp = {d.dp}*{d.tp}*{d.pp}*{d.cp} = {d.world_size} but the cluster has "
                   f"{t.world_size} GPUs; make the product equal the GPU count")
    if t.num_heads % d.tp:
        out.append(f"tp: {d.tp} does not divide num_attention_heads={t.num_heads}")
    elif t.kv_heads % d.tp:  # no KV-head replication in training (Megatron-LM, executor alike)
        out.append(f"tp: {d.tp} does not divide num_key_value_heads={t.kv_heads}; lower tp")
    if d.pp > t.num_layers:
        out.append(f"pp: {d.pp} exceeds num_hidden_layers={t.num_layers}")
    if d.cp > 1 and t.seq_len % (2 * d.cp):
        out.append(f"cp: seq_len={t.seq_len} must be divisible by 2*cp = {2 * d.cp} (load-balanced causal chunks)")
    if t.global_batch % d.dp:
        out.append(f"dp: {d.dp} does not divide global_batch={t.global_batch}")
    out += _expert_problems(d, t)
    return out


def _expert_problems(d: ParallelDims, t: Target) -> list[str]:
    if not t.num_experts:
        return ["ep/etp: expert parallelism needs an MoE model; set ep=1 and etp=1"] if d.ep > 1 or d.etp > 1 else []
    out = []
    if t.num_experts % d.ep:
        out.append(f"ep: {d.ep} does not divide num_local_experts={t.num_experts}")
    if t.expert_ffn % d.etp:
        out.append(f"etp: {d.etp} does not divide the expert FFN width {t.expert_ffn}")
    return out


def _knob_problems(plan: Plan, t: Target) -> list[str]:
    d, out = plan.dims, []
    if plan.blocks_per_stage is not None or plan.num_chunks <= t.num_layers:  # an even split has an
        blocks = plan.stage_blocks(t.num_layers)  # entry per chunk: never built for pp = 10**12
        if sum(blocks) != t.num_layers or min(blocks) < 0:
            out.append(f"blocks_per_stage: sums to {sum(blocks)} but the model has {t.num_layers} layers")
    if plan.num_chunks > t.num_layers:
        out.append(f"pp*virtual_stages = {plan.num_chunks} exceeds num_hidden_layers={t.num_layers}; "
                   "lower pp or virtual_stages")
    if t.global_batch % (d.dp * plan.micro_batch_size):
        out.append(f"micro_batch_size: global_batch={t.global_batch} is not divisible by dp*micro_batch_size = "
                   f"{d.dp}*{plan.micro_batch_size}")
    if plan.sequence_parallel and d.tp == 1:
        out.append("sequence_parallel: needs tp > 1")
    elif plan.sequence_parallel and (t.seq_len // d.cp) % d.tp:
        out.append(f"sequence_parallel: seq_len/cp = {t.seq_len // d.cp} must be divisible by tp={d.tp}")
    if plan.fp8_recipe is not None and not t.fp8:
        out.append("fp8_recipe: needs job precision = 'fp8'; drop the recipe or set [job] precision = \"fp8\"")
    if plan.balance is not None and not t.documents:
        out.append("balance: needs [job.sequences] (packed documents); drop the plan's balance")
    u = plan.ulysses_degree()
    if u > 1 and (t.num_heads // d.tp) % u:
        out.append(f"cp_kind: all-to-all over {u} ranks needs num_attention_heads/tp = {t.num_heads // d.tp} "
                   f"divisible by {u}; use cp_kind = 'ring' or a smaller all-to-all degree")
    out += _schedule_problems(plan, t)
    out += _placement_problems(plan, t)
    out += _mapping_problems(plan, t)
    return out


def _mapping_problems(plan: Plan, t: Target) -> list[str]:
    if plan.device_mapping is None or not t.gpus_per_node:
        return []
    gpus = 1 + max(g for _, g in plan.device_mapping)
    if gpus != t.gpus_per_node:
        return [f"device_mapping: places ranks on {gpus} GPUs per node but the cluster has gpus_per_node="
                f"{t.gpus_per_node}; re-plan for this cluster or drop device_mapping"]
    return []


def _schedule_problems(plan: Plan, t: Target) -> list[str]:
    found = schedule_problem(plan.schedule, pp=plan.dims.pp, num_micro_batches=plan.num_micro_batches(t.global_batch))
    return [found] if found else []


def schedule_problem(schedule: Schedule, *, pp: int, num_micro_batches: int) -> str | None:
    """Why `schedule` cannot run pp stages on this many micro-batches (the search's knob grid
    asks the same question before it builds plans)."""
    m = num_micro_batches
    if pp == 1 or schedule == Schedule.GPIPE:
        return None
    if schedule == Schedule.INTERLEAVED_1F1B and m % pp:
        return f"schedule: interleaved 1F1B needs the micro-batch count ({m}) to be a multiple of pp={pp}"
    if m < pp:
        return (f"schedule: {schedule.value} needs at least pp={pp} micro-batches but global_batch/"
                f"(dp*micro_batch_size) = {m}; lower micro_batch_size or pp, or use gpipe")
    return None


def _placement_problems(plan: Plan, t: Target) -> list[str]:
    for name, rows in (("expert_placement", plan.expert_placement), ("expert_load", plan.expert_load)):
        if rows is not None and (len(rows) != t.num_moe_layers or any(len(row) != t.num_experts for row in rows)):
            return [f"{name}: needs one row of {t.num_experts} entries per MoE layer ({t.num_moe_layers} layers)"]
    if plan.expert_placement is None:
        return []
    ep, experts = plan.dims.ep, t.num_experts
    for layer, placement in enumerate(plan.expert_placement):
        counts = Counter(placement)  # O(experts), whatever ep is
        if len(placement) != experts or ep > experts or sorted(counts) != list(range(ep)) or \
                set(counts.values()) != {experts // ep}:
            return [f"expert_placement[{layer}]: must give each of {ep} EP ranks exactly "
                    f"{experts // ep} of the {experts} experts"]
    return []
