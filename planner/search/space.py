"""The search space: every valid layout (dp x tp x pp x cp x ep x etp) of a world size and the
knob grid of each (micro-batch, schedule / virtual stages, ZeRO stage, recompute, sequence
parallel). Pure functions over the scenario; invalid layouts come back with their reason.

Validity is planner.plan.problems (one copy of the rules). The space itself only enumerates
foldings with ep*etp dividing dp*cp*tp (MoE parallel folding, Liu et al. 2025: the expert layers
re-split the stage's GPUs, so etp is independent of the attention's tp) and etp inside the NVLink
domain (it reduces every expert GEMM's output, TP-like traffic that Megatron keeps on the fast tier).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from planner.plan import (Axis, BalancePolicy, CpKind, Fp8Recipe, OffloadState, OffloadTier, ParallelDims, Plan,
                          Recompute, Schedule, ZeroStage, problems, schedule_problem)
from planner.scenario import Precision, Scenario


@dataclass(frozen=True, slots=True, kw_only=True)
class Knobs:
    micro_batch_size: int
    schedule: Schedule
    virtual_stages: int
    zero_stage: ZeroStage
    recompute: Recompute
    sequence_parallel: bool
    cp_kind: CpKind = CpKind.RING
    cp_a2a: int = 1
    offload: dict[OffloadState, OffloadTier] = field(default_factory=dict, hash=False)
    vocab_parallel: bool = False
    fp8_recipe: Fp8Recipe | None = None
    balance: BalancePolicy | None = None


def divisors(n: int) -> list[int]:
    """Every divisor of n, ascending, from its prime factorisation (trial division to sqrt(n)):
    O(sqrt(n)) instead of O(n), so 10^9 nodes x 8 GPUs takes milliseconds, not hours."""
    factors: dict[int, int] = {}
    rest, p = n, 2
    while p * p <= rest:
        while rest % p == 0:
            factors[p] = factors.get(p, 0) + 1
            rest //= p
        p += 1 if p == 2 else 2
    if rest > 1:
        factors[rest] = factors.get(rest, 0) + 1
    out = [1]
    for prime, power in factors.items():
        out = [d * prime**k for d in out for k in range(power + 1)]
    return sorted(out)


def _allowed(scenario: Scenario, axis: Axis, limit: int | None) -> list[int] | None:
    """Degrees an axis may take by the [search] table (None = any)."""
    space = scenario.search
    if axis in space.fixed:
        return [space.fixed[axis]]
    if axis not in space.axes:
        return [1]
    return None if limit is None else list(range(1, limit + 1))


def layouts(scenario: Scenario) -> Iterator[tuple[ParallelDims, str | None]]:
    """Every factorisation of the world size, with None or the reason it is invalid."""
    world, space = scenario.cluster.world_size, scenario.search
    limits = {Axis.TP: space.max_tp, Axis.PP: space.max_pp, Axis.CP: space.max_cp}
    allowed = {axis: _allowed(scenario, axis, limit) for axis, limit in limits.items()}
    for tp in divisors(world):
        for pp in divisors(world // tp):
            for cp in divisors(world // (tp * pp)):
                dp = world // (tp * pp * cp)
                if any(v is not None and d not in v for d, v in ((tp, allowed[Axis.TP]), (pp, allowed[Axis.PP]),
                                                                (cp, allowed[Axis.CP]))):
                    continue
                if not _dp_allowed(scenario, dp):
                    continue
                yield from _expert_layouts(scenario, ParallelDims(dp=dp, tp=tp, pp=pp, cp=cp))


def _dp_allowed(scenario: Scenario, dp: int) -> bool:
    fixed = scenario.search.fixed.get(Axis.DP)
    return (fixed is None or fixed == dp) and (Axis.DP in scenario.search.axes or dp == 1)


def _expert_layouts(scenario: Scenario, base: ParallelDims) -> Iterator[tuple[ParallelDims, str | None]]:
    model, space = scenario.model, scenario.search
    reason = dense_reason(scenario, base)
    if not model.is_moe or reason is not None:
        yield base, reason
        return
    ep_allowed, etp_allowed = _allowed(scenario, Axis.EP, space.max_ep), _allowed(scenario, Axis.ETP, None)
    slice_ = base.dp * base.cp * base.tp
    for ep in divisors(model.num_local_experts):
        for etp in divisors(slice_):
            if slice_ % (ep * etp) or (ep_allowed and ep not in ep_allowed) or (etp_allowed and etp not in etp_allowed):
                continue
            if etp > scenario.cluster.nvlink_domain > 1 and etp > 1:
                continue
            dims = ParallelDims(dp=base.dp, tp=base.tp, pp=base.pp, cp=base.cp, ep=ep, etp=etp)
            found = problems(dims, scenario) if etp > 1 else []  # etp must divide the expert FFN
            yield dims, ("invalid: " + "; ".join(found)) if found else None


def dense_reason(scenario: Scenario, lay: ParallelDims) -> str | None:
    """Why a layout cannot run this model, in one line (planner.plan.problems); None when it can."""
    found = problems(lay, scenario)
    return "invalid: " + "; ".join(found) if found else None


def micro_batch_sizes(scenario: Scenario, lay: ParallelDims) -> list[int]:
    """Sizes that divide the replica's batch and leave at least one runnable schedule."""
    per_replica = scenario.job.global_batch // lay.dp
    return [b for b in scenario.search.micro_batch_sizes if per_replica % b == 0 and schedules(scenario, lay, b)]


def schedules(scenario: Scenario, lay: ParallelDims, mbs: int) -> list[tuple[Schedule, int]]:
    """(schedule, virtual stages) pairs; one entry when pp = 1 (the schedule does not matter)."""
    if lay.pp == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    m = scenario.job.global_batch // (lay.dp * mbs)
    out = []
    for schedule in scenario.search.schedules:
        if schedule_problem(schedule, pp=lay.pp, num_micro_batches=m) is not None:
            continue  # e.g. 1F1B with fewer micro-batches than stages: torch refuses it
        if schedule != Schedule.INTERLEAVED_1F1B:
            out.append((schedule, 1))
            continue
        out += [(schedule, vp) for vp in range(2, scenario.search.max_vp + 1)
                if lay.pp * vp <= scenario.model.num_hidden_layers]
    return out


def zero_stages(scenario: Scenario, lay: ParallelDims) -> list[ZeroStage]:
    """ZeRO shards over dp*cp; without either every stage equals ZeRO-0."""
    stages = sorted(scenario.search.zero_stages)
    if lay.dp * lay.cp == 1:
        return stages[:1]
    return stages


def sequence_parallel(scenario: Scenario, lay: ParallelDims) -> bool:
    """Sequence parallelism moves the same bytes as the TP all-reduce (reduce-scatter +
    all-gather) and divides the norm/dropout activations by tp (Korthikanti et al. 2022), so
    it dominates plain TP whenever the search allows it."""
    return lay.tp > 1 and True in scenario.search.sequence_parallel


def knob_grid_size(scenario: Scenario, lay: ParallelDims) -> int:
    """How many knob combinations the full grid has (for the enumeration count), the long-context
    knobs (CP kind, vocabulary parallelism, FP8 recipe, balance policy) included."""
    sp = len(scenario.search.sequence_parallel) if lay.tp > 1 else 1
    per_mbs = sum(len(schedules(scenario, lay, b)) for b in micro_batch_sizes(scenario, lay))
    extra = (len(cp_options(scenario, lay)) * len(vocab_parallel(scenario, lay)) * len(fp8_recipes(scenario))
             * len(balance_policies(scenario)))
    return per_mbs * len(scenario.search.zero_stages) * len(scenario.search.recompute) * sp * extra


def frugal_knobs(scenario: Scenario, lay: ParallelDims) -> Knobs:
    """The least-memory knob setting of a layout (for the lower bound and invalid records)."""
    mbs = (micro_batch_sizes(scenario, lay) or [min(scenario.search.micro_batch_sizes)])[0]
    return Knobs(micro_batch_size=mbs, schedule=Schedule.ONE_F_ONE_B, virtual_stages=1,
                 zero_stage=max(zero_stages(scenario, lay)), recompute=max(scenario.search.recompute, key=recompute_rank),
                 sequence_parallel=sequence_parallel(scenario, lay))


def recompute_rank(r: Recompute) -> int:
    return {Recompute.NONE: 0, Recompute.SELECTIVE: 1, Recompute.FULL: 2}[r]


def cp_options(scenario: Scenario, lay: ParallelDims) -> list[tuple[CpKind, int]]:
    """(cp_kind, cp_a2a) settings a layout may use, in order of preference on equal time.

    Ulysses needs the local heads (heads / tp) divisible by its all-to-all degree (Jacobs et al.
    2023 Sec. 3.1); the hybrid is for CP groups that leave the NVLink domain: its all-to-all spans
    the CP ranks inside one domain (cp is inside dp and outside tp on the default rank grid, so
    domain / tp of them share it) and its ring crosses the nodes (USP's placement).
    """
    if lay.cp == 1:
        return [(CpKind.RING, 1)]
    heads = scenario.model.num_attention_heads // lay.tp
    out = []
    for kind in scenario.search.cp_kinds:
        match kind:
            case CpKind.RING | CpKind.RING_BIDIRECTIONAL:
                out.append((kind, 1))
            case CpKind.ALL_TO_ALL if heads % lay.cp == 0:
                out.append((kind, lay.cp))
            case CpKind.HYBRID if lay.cp * lay.tp > scenario.cluster.nvlink_domain:  # spans domains
                inside = scenario.cluster.nvlink_domain // lay.tp
                fits = [u for u in divisors(lay.cp) if 1 < u < lay.cp and u <= inside and heads % u == 0]
                if fits:
                    out.append((kind, max(fits)))
            case _:
                pass
    return out or [(CpKind.RING, 1)]


def fp8_recipes(scenario: Scenario) -> list[Fp8Recipe | None]:
    """Recipes tried with [job] precision = 'fp8' (first = the probe's); [None] otherwise."""
    if scenario.job.precision != Precision.FP8:
        return [None]
    return list(scenario.search.fp8_recipes) or [None]


def balance_policies(scenario: Scenario) -> list[BalancePolicy | None]:
    """Balance policies tried with [job.sequences] (the job's own first); [None] otherwise."""
    if scenario.job.sequences is None:
        return [None]
    own = scenario.job.sequences.balance
    return [own] + [p for p in scenario.search.balance_policies if p != own]


def vocab_parallel(scenario: Scenario, lay: ParallelDims) -> list[bool]:
    return [v for v in scenario.search.vocab_parallel if lay.pp > 1 or not v] or [False]


def make_plan(lay: ParallelDims, knobs: Knobs) -> Plan:
    return Plan(dims=lay, micro_batch_size=knobs.micro_batch_size, schedule=knobs.schedule,
                virtual_stages=knobs.virtual_stages, zero_stage=knobs.zero_stage, recompute=knobs.recompute,
                sequence_parallel=knobs.sequence_parallel, cp_kind=knobs.cp_kind,
                cp_a2a=knobs.cp_a2a if knobs.cp_kind == CpKind.HYBRID else 1, offload=knobs.offload,
                vocab_parallel=knobs.vocab_parallel, fp8_recipe=knobs.fp8_recipe, balance=knobs.balance)
