"""Search: the fastest plan that fits, with a reason for every plan it rejects.

Where the time goes and how it is kept small (estimate() costs ~0.5-1 ms; 405B on 16,384 GPUs has
~140k knob combinations and DeepSeek-V3 on 2,048 GPUs ~2.5M):
1. enumerate layouts (search_space.py) and reject invalid ones with their reason;
2. prune layouts whose cheapest-memory setting (ZeRO max, full recompute) is over memory by the
   cost model's model-state lower bound (no activations needed, ~0.03 ms);
3. probe each attention layout (dp, tp, pp, cp) once at reference knobs; MoE layouts probe the
   expert folding (ep, etp) of the best attention layouts only (the two parts are separable to
   first order: attention traffic does not depend on ep/etp);
4. refine the best probed layouts by coordinate descent over knob groups (micro-batch, then
   schedule / virtual stages, then the ZeRO x recompute staircase: the least recompute that fits
   for each ZeRO stage, since recompute only ever adds time). Dominated knobs are never costed:
   sequence parallelism moves the same bytes as plain TP and saves memory.
5. the top plans get an uneven stage partition (ilp.partition_stages) and, for MoE, an expert
   placement (ilp_experts.place_experts); the cost model re-prices them and keeps what is faster.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from planner import cost
from planner.cost import RESERVED_BYTES
from planner.graph import ModelGraph, collector_paused
from planner.hardware import HardwareProfile
from planner.plan import ParallelDims, Plan, Recompute, ZeroStage
from planner.scenario import GIB, Scenario
from planner.search import space as ss
from planner.search.counts import gpu_count_advice, has_layout
from planner.search.ilp.routing import RoutingStats
from planner.search.pricer import Estimator, Pricer
from planner.search.result import Candidate, SearchResult, TuneResult
from planner.search.space import Knobs
from planner.search.tune import tune_top

_REFINE_MIN, _REFINE_MAX, _REFINE_WITHIN = 6, 12, 1.3  # layouts refined: top N, all within 30%
_EXPERT_ATTENTION_LAYOUTS = 6  # attention layouts whose ep x etp variants are probed
_TIE = 1e-3  # a CP kind must be 0.1% faster than an earlier one to replace it (no churn on equal time)
# Fitting plans re-priced with the event simulator before the final ranking: the closed-form
# pipeline model ranks the grid, the simulator (per-boundary links, real schedule order) has the
# last word on the leaders, so the plan reported first is the fastest the simulator knows. Its
# cost grows with the pipeline actions (2 pp m v per plan): past the budget only the first is
# simulated (a 405B plan on 16,384 GPUs is ~25k actions, ~1 s of Python).
_SIMULATED_LEADERS, _SIMULATION_ROUNDS, _SIMULATED_ACTIONS_BUDGET = 5, 3, 40_000


def search(graph: ModelGraph, scenario: Scenario, *, hw: HardwareProfile, top_k: int = 10,
           progress: Callable[[int, int], None] | None = None, estimator: Estimator | None = None,
           routing: RoutingStats | None = None) -> SearchResult:
    """Rank every valid plan of `scenario` (see the module docstring for the pipeline); the
    cyclic collector is paused meanwhile: every candidate lives until the end (graph/collector.py)."""
    start = time.perf_counter()
    run = Pricer(graph=graph, scenario=scenario, hw=hw, est=estimator or cost)
    if progress is not None:
        run.tick = lambda: progress(run.stats.costed, 0)
    valid: list[ParallelDims] = []  # every layout the rules allow (pruned ones included)
    with collector_paused():
        _search_pass(run, valid)
        for setting in scenario.search.offload:  # offload only when nothing fits without it
            if any(c.fits for c in run.candidates):
                break
            run.offload, run.frugal_plans = dict(setting), {}
            _search_pass(run, [], record_invalid=False)
        tuned = tune_top(run, routing=routing)  # ILP post-pass: uneven stages, expert placement
        _settle_counts(run, valid)
        run.stats.seconds = time.perf_counter() - start
        return _result(run, top_k=top_k, tuned=tuned)


def _search_pass(run: Pricer, valid: list[ParallelDims], *, record_invalid: bool = True) -> None:
    """Enumerate, prune, probe and refine at the pricer's offload setting."""
    probes = _probe(run, _enumerate_and_prune(run, valid, record_invalid=record_invalid))
    for lay in _to_refine(probes):
        _refine(run, lay)


def _enumerate_and_prune(run: Pricer, valid: list[ParallelDims], *, record_invalid: bool = True) -> list[ParallelDims]:
    survivors = []
    for lay, reason in ss.layouts(run.scenario):
        if reason is not None and not record_invalid:
            continue
        grid = run.grid(lay) if reason is None else 1
        if record_invalid:  # an offload pass revisits the same layouts: count them once
            run.stats.layouts += 1
            run.stats.enumerated += grid
        if reason is not None:
            run.stats.invalid += 1
            run.reject(run.frugal(lay), reason)
            continue
        valid.append(lay)
        frugal = run.frugal(lay)
        lower = run.est.memory_lower_bound_bytes(run.graph, frugal, run.scenario.job, run.scenario.cluster)
        limit = _capacity_bytes(run)
        if lower > limit:
            if run.closest_bound is None or lower - limit < run.closest_bound[0]:
                run.closest_bound = (lower - limit, frugal)
            run.reject(frugal, f"OOM: model states alone need {lower / GIB:.1f} GiB > {limit / GIB:.1f} GiB "
                               f"even with ZeRO-{int(frugal.zero_stage)} and {frugal.recompute.value} recompute "
                               f"({grid} knob settings pruned)")
            continue
        survivors.append(lay)
    return survivors


def _capacity_bytes(run: Pricer) -> float:
    return (run.hw.memory_gib * GIB - RESERVED_BYTES) * run.scenario.search.memory_fraction


def _reference(scenario: Scenario, lay: ParallelDims) -> Knobs | None:
    """Probe knobs: smallest micro-batch, 1F1B, the lightest ZeRO that shards, no recompute."""
    sizes = ss.micro_batch_sizes(scenario, lay)
    if not sizes:
        return None
    zeros = ss.zero_stages(scenario, lay)
    zero = next((z for z in zeros if z == ZeroStage.OPTIMIZER), zeros[0])
    rec = min(scenario.search.recompute, key=ss.recompute_rank)
    schedule = ss.schedules(scenario, lay, sizes[0])[0]
    return Knobs(micro_batch_size=sizes[0], schedule=schedule[0], virtual_stages=schedule[1], zero_stage=zero,
                 recompute=rec, sequence_parallel=ss.sequence_parallel(scenario, lay))


def _probe(run: Pricer, layouts: list[ParallelDims]) -> dict[ParallelDims, float]:
    """One estimate per attention layout; MoE expert variants only for the best attention layouts."""
    by_attention: dict[tuple, list[ParallelDims]] = {}
    for lay in layouts:
        by_attention.setdefault((lay.dp, lay.tp, lay.pp, lay.cp), []).append(lay)
    probes: dict[ParallelDims, float] = {}
    for group in by_attention.values():
        for lay in _expert_representatives(run.scenario, group):
            _probe_one(run, lay, probes)
    if run.scenario.model.is_moe:
        best_keys = sorted({(l.dp, l.tp, l.pp, l.cp): t for l, t in probes.items()}.items(), key=lambda kv: kv[1])
        for key, _ in best_keys[:_EXPERT_ATTENTION_LAYOUTS]:
            for lay in by_attention[key]:
                _probe_one(run, lay, probes)
    for group in by_attention.values():  # layouts never probed are pruned with a reason
        for lay in group:
            if lay not in probes:
                _reject_layout(run, lay, "pruned: its attention layout was not among the best probed; "
                                         "expert folding variant not priced")
    return probes


def _expert_representatives(scenario: Scenario, group: list[ParallelDims]) -> list[ParallelDims]:
    """Dense: the layout itself. MoE: etp=1 with the largest ep inside the NVLink domain (the
    usual sweet spot: expert memory sharded, all-to-all on the fast tier); the other foldings of
    the best attention layouts are probed afterwards."""
    if len(group) == 1:
        return group
    plain = [lay for lay in group if lay.etp == 1] or group
    inside = [lay for lay in plain if lay.ep <= scenario.cluster.nvlink_domain] or plain
    return [max(inside, key=lambda lay: lay.ep)]


def _probe_one(run: Pricer, lay: ParallelDims, probes: dict[ParallelDims, float]) -> None:
    """Price the reference knobs once per CP kind the layout allows; keep the fastest kind
    (ties go to the earlier option: plain ring before its variants)."""
    if lay in probes:
        return
    knobs = _reference(run.scenario, lay)
    if knobs is None:
        _reject_layout(run, lay, "invalid: no micro-batch size divides global_batch / dp with a runnable schedule")
        probes[lay] = float("inf")
        return
    best, knobs = None, run.with_choices(lay, knobs)
    for kind, a2a in ss.cp_options(run.scenario, lay):
        t = run.cost(ss.make_plan(lay, replace(knobs, cp_kind=kind, cp_a2a=a2a))).estimate.step_time_s
        if best is None or t < best[0] * (1 - _TIE):
            best = (t, kind, a2a)
    probes[lay] = best[0]
    run.cp_choice[lay] = best[1:]
    _probe_zero3(run, lay, replace(knobs, cp_kind=best[1], cp_a2a=best[2]), probes)


def _probe_zero3(run: Pricer, lay: ParallelDims, knobs: Knobs, probes: dict[ParallelDims, float]) -> None:
    """ZeRO-3 gathers per micro-batch, so it shows its best at the largest micro-batch: where the
    step's gradient buckets cost more than per-layer collectives (many ranks), that probe ranks
    the layout, not the lightest stage's; only if it fits (the refinement starts from the probed
    micro-batch sizes and would not reach a plan that does not)."""
    sc = run.scenario
    zero3_allowed = ZeroStage.PARAMETERS in ss.zero_stages(sc, lay)
    if lay.dp == 1 or knobs.zero_stage == ZeroStage.PARAMETERS or not zero3_allowed:
        return
    mbs = ss.micro_batch_sizes(sc, lay)[-1]
    schedule, vp = ss.schedules(sc, lay, mbs)[0]
    zero3 = run.cost(ss.make_plan(lay, replace(knobs, zero_stage=ZeroStage.PARAMETERS, micro_batch_size=mbs,
                                               schedule=schedule, virtual_stages=vp)))
    if zero3.fits:
        probes[lay] = min(probes[lay], zero3.estimate.step_time_s)


def _reject_layout(run: Pricer, lay: ParallelDims, reason: str) -> None:
    grid = run.grid(lay)
    run.reject(run.frugal(lay), f"{reason} ({grid} knob settings)")


def _to_refine(probes: dict[ParallelDims, float]) -> list[ParallelDims]:
    ranked = sorted((t, i, lay) for i, (lay, t) in enumerate(probes.items()) if t < float("inf"))
    if not ranked:
        return []
    best = ranked[0][0]
    chosen = [lay for k, (t, _, lay) in enumerate(ranked) if k < _REFINE_MIN or t <= _REFINE_WITHIN * best]
    return chosen[:_REFINE_MAX]


def _settle_counts(run: Pricer, valid: list[ParallelDims]) -> None:
    """Every knob setting of a valid layout was costed or pruned: pruned = grid - costed, per
    layout (memory bound, layout not probed, not refined, dominated knobs alike), so that
    enumerated = invalid + pruned + (costed - tuned); `tuned` counts the ILP variants (uneven
    stages, expert placement) the post-pass priced beyond the grid and the offload passes' plans."""
    in_grid: Counter[ParallelDims] = Counter(
        c.plan.dims for c in run.candidates if c.estimate is not None and c.plan.blocks_per_stage is None
        and c.plan.expert_placement is None and c.plan.expert_load is None and not c.plan.offload)
    run.stats.pruned = sum(max(run.grid(lay) - in_grid[lay], 0) for lay in valid)
    run.stats.tuned = run.stats.costed - sum(in_grid.values())


def _refine(run: Pricer, lay: ParallelDims) -> None:
    """Coordinate descent: micro-batch -> schedule -> ZeRO x recompute staircase."""
    sc = run.scenario
    ref = run.with_choices(lay, _reference(sc, lay))
    by_mbs = []
    for mbs in ss.micro_batch_sizes(sc, lay):
        sched = ss.schedules(sc, lay, mbs)[0]
        knobs = replace(ref, micro_batch_size=mbs, schedule=sched[0], virtual_stages=sched[1])
        by_mbs.append((run.cost(ss.make_plan(lay, knobs)).estimate.step_time_s, mbs))
    pairs = []
    for _, mbs in sorted(by_mbs)[:2]:
        for schedule, vp in ss.schedules(sc, lay, mbs):
            knobs = replace(ref, micro_batch_size=mbs, schedule=schedule, virtual_stages=vp)
            pairs.append((run.cost(ss.make_plan(lay, knobs)).estimate.step_time_s, knobs))
    for _, knobs in sorted(pairs, key=lambda p: p[0])[:2]:
        fitting = _staircase(run, lay, knobs)
        if fitting is None:
            continue
        for vocab in ss.vocab_parallel(sc, lay):  # vocab parallelism, other FP8 recipes and balance policies
            if vocab:
                run.cost(ss.make_plan(lay, replace(fitting, vocab_parallel=True)))
        for recipe in ss.fp8_recipes(sc)[1:]:
            run.cost(ss.make_plan(lay, replace(fitting, fp8_recipe=recipe)))
        for balance in ss.balance_policies(sc)[1:]:
            run.cost(ss.make_plan(lay, replace(fitting, balance=balance)))


def _staircase(run: Pricer, lay: ParallelDims, base: Knobs) -> Knobs | None:
    """For each ZeRO stage, the least recompute that fits (more recompute never runs faster);
    returns the fastest fitting knobs."""
    sc = run.scenario
    recomputes = sorted(sc.search.recompute, key=ss.recompute_rank)
    best: tuple[float, Knobs] | None = None
    for zero in ss.zero_stages(sc, lay):
        for k, rec in enumerate(recomputes):
            knobs = replace(base, zero_stage=zero, recompute=rec)
            plan = ss.make_plan(lay, knobs)
            lower = run.est.memory_lower_bound_bytes(run.graph, plan, sc.job, sc.cluster)
            if lower > _capacity_bytes(run):
                continue
            cand = run.cost(plan)
            if cand.fits:
                if best is None or cand.estimate.step_time_s < best[0]:
                    best = (cand.estimate.step_time_s, knobs)
                break
    return None if best is None else best[1]


def _result(run: Pricer, *, top_k: int, tuned: TuneResult) -> SearchResult:
    """Rank the fitting plans (ties go to the ILP-tuned plan the post-pass derived) and price the
    best once more with the event simulator's timeline, in place: the report reads it as is."""
    candidates, pinned = _simulate_leaders(run, list(run.candidates))
    first = candidates[pinned] if pinned is not None else None
    fitting = sorted((c for c in candidates if c.fits),
                     key=lambda c: (c is not first, c.estimate.step_time_s, c.plan.expert_placement is None,
                                    c.plan.blocks_per_stage is None))
    ranks = {id(c): i + 1 for i, c in enumerate(fitting)}
    candidates = [replace(c, rank=ranks.get(id(c))) for c in candidates]
    best_index = next((i for i, c in enumerate(candidates) if c.rank == 1), None)
    ranked = sorted((c for c in candidates if c.rank is not None), key=lambda c: c.rank)
    run.stats.fitting = len(ranked)
    nothing = None if ranked else nothing_fits_line(run.scenario, candidates, closest_bound=run.closest_bound)
    return SearchResult(candidates=candidates, best=ranked[0] if ranked else None, best_index=best_index,
                        pareto=pareto_front(ranked), stats=run.stats, nothing_fits=nothing, top=ranked[:top_k],
                        moe=tuned.moe, partition=tuned.partition, device_mapping=tuned.device_mapping)


def _simulate_leaders(run: Pricer, candidates: list[Candidate]) -> tuple[list[Candidate], int | None]:
    """Re-price the fastest fitting candidates with the event simulator (timelines kept, in place:
    the report reads the best's as is) until the _SIMULATED_LEADERS fastest are all simulated: a
    leader the simulator slows down lets the next closed-form plan in, simulated in turn. Past
    _SIMULATION_ROUNDS or _SIMULATED_ACTIONS_BUDGET the fastest simulated plan is returned as the
    one to rank first (as a closed-form ranking with only its winner simulated would)."""
    simulated: set[int] = set()
    fitting = [i for i, c in enumerate(candidates) if c.fits]
    actions = 0
    for _ in range(_SIMULATION_ROUNDS):
        fitting.sort(key=lambda i: candidates[i].estimate.step_time_s)
        pending = [i for i in fitting[:_SIMULATED_LEADERS] if i not in simulated]
        if not pending:
            return candidates, None
        for i in pending:
            cost = _pipeline_actions(candidates[i].plan, run.scenario.job.global_batch)
            if simulated and actions + cost > _SIMULATED_ACTIONS_BUDGET:
                return candidates, _fastest(candidates, simulated)
            actions += cost
            candidates[i] = replace(candidates[i], estimate=run.est.estimate(
                run.graph, candidates[i].plan, hw=run.hw, cluster=run.scenario.cluster, job=run.scenario.job,
                timeline=True))
            simulated.add(i)
    return candidates, _fastest(candidates, simulated)


def _fastest(candidates: list[Candidate], among: set[int]) -> int | None:
    return min(among, key=lambda i: candidates[i].estimate.step_time_s, default=None)


def _pipeline_actions(plan: Plan, global_batch: int) -> int:
    """Forward and backward actions the event simulator steps through for this plan."""
    return 2 * plan.dims.pp * plan.virtual_stages * max(1, plan.num_micro_batches(global_batch))


def pareto_front(fitting: list[Candidate]) -> list[Candidate]:
    """Plans no other plan beats on both throughput and peak memory (sorted by throughput)."""
    front, best_mem = [], float("inf")
    for c in sorted(fitting, key=lambda c: (-c.estimate.tokens_per_s_per_gpu, c.estimate.peak_memory_bytes)):
        if c.estimate.peak_memory_bytes < best_mem:
            front.append(c)
            best_mem = c.estimate.peak_memory_bytes
    return front


def nothing_fits_line(scenario: Scenario, candidates: list[Candidate], *,
                      closest_bound: tuple[float, Plan] | None = None) -> str:
    """One line: the smallest shortfall and what would actually make it fit."""
    costed = [c for c in candidates if c.estimate is not None]
    if costed:
        closest = min(costed, key=lambda c: c.estimate.peak_memory_bytes - c.estimate.memory_capacity_bytes)
        e, plan = closest.estimate, closest.plan
        over = (e.peak_memory_bytes - e.memory_capacity_bytes * scenario.search.memory_fraction) / GIB
    elif closest_bound is not None:
        # Model states (weights, gradients, optimizer) do not shrink with the sequence: say so.
        over, plan = closest_bound[0] / GIB, closest_bound[1]
        allow = [hint for hint, missing in (("allow ZeRO-3", ZeroStage.PARAMETERS not in scenario.search.zero_stages),
                                            ("allow full recompute", Recompute.FULL not in scenario.search.recompute))
                 if missing]
        if allow:
            return (f"nothing fits: with the most memory-frugal layout [search] allows ({plan.describe()}) the model "
                    f"states alone are {_gib_text(over)} GiB over the per-GPU limit; try {', '.join(allow)} or more GPUs "
                    "(a shorter sequence would not help)")
        return (f"nothing fits even fully sharded: with the most memory-frugal layout ({plan.describe()}) the "
                f"model states alone are {_gib_text(over)} GiB over the per-GPU limit, before any activations; "
                "use more GPUs or GPUs with more memory (a shorter sequence would not help)")
    else:
        if not has_layout(scenario.cluster.world_size, scenario.plan_target()):
            return gpu_count_advice(scenario)  # a factor of the GPU count no axis can take
        return _no_valid_layout(candidates)
    hints = ["more GPUs"]
    if Recompute.FULL not in scenario.search.recompute:
        hints.append("allow full recompute")
    if ZeroStage.PARAMETERS not in scenario.search.zero_stages:
        hints.append("allow ZeRO-3")
    hints.append(f"a shorter sequence than {scenario.job.seq_len}")
    return f"nothing fits: the closest plan ({plan.describe()}) is {_gib_text(over)} GiB over; try {', '.join(hints)}"


def _gib_text(gib: float) -> str:
    """1,884.9 for big shortfalls, 0.0012 for tiny ones (never a misleading 0.0)."""
    return f"{gib:,.1f}" if gib >= 0.05 else f"{gib:.2g}"


def _no_valid_layout(candidates: list[Candidate]) -> str:
    """Name the rule that rejected the layouts (2*cp vs seq_len, tp vs heads, dp vs batch...)."""
    reasons = [c.reason.removeprefix("invalid: ") for c in candidates if c.reason and c.reason.startswith("invalid")]
    if not reasons:
        return "nothing fits: no layout of the [search] space matches the GPU count; relax [search] fixed / max_* limits"
    kinds = Counter(r.split("=")[0] for r in reasons)
    kind, _ = kinds.most_common(1)[0]
    example = next(r for r in reasons if r.startswith(kind))
    return (f"nothing fits: all {len(reasons)} layouts are invalid, e.g. {example}; change the job or the "
            "[search] limits so that some layout satisfies it")