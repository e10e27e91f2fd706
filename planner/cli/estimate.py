"""`planner estimate`: one plan (from plan.json or flags) priced by the cost model, as tables or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from planner.cost import Estimate, estimate
from planner.graph import cached_graph
from planner.hardware import datasheet_profile, load_profile
from planner.plan import (CpKind, Fp8Recipe, OffloadState, OffloadTier, ParallelDims, Plan, Recompute, Schedule,
                          ZeroStage, check)
from planner.errors import UserError
from planner.report.output import write_file
from planner.scenario import GIB, Scenario
from planner.search import usable_capacity_bytes



@dataclass(frozen=True, slots=True, kw_only=True)
class PlanKnobs:
    """The CLI's knob flags (the degrees travel as a ParallelDims; None means 'not given')."""

    vp: int = 1
    mbs: int = 1
    zero: int = 0
    recompute: str = "none"
    schedule: str | None = None
    sp: bool | None = None
    cp_kind: str = "ring"
    cp_a2a: int = 1
    offload: str = ""  # "state:tier,..."
    vocab_parallel: bool = False
    fp8_recipe: str | None = None


def dims_from_flags(*, tp: int, pp: int, cp: int, ep: int, etp: int, dp: int | None, world: int) -> ParallelDims:
    """The degrees the flags name; dp defaults to world / (tp*pp*cp). ValueError names the flag."""
    _positive(tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, dp=dp)
    model_parallel = tp * pp * cp
    if dp is None and world % model_parallel:
        raise ValueError(f"--tp*--pp*--cp = {model_parallel} does not divide the {world} GPUs; change them or pass --dp")
    return ParallelDims(dp=dp if dp is not None else world // model_parallel, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp)


def plan_from_flags(dims: ParallelDims, knobs: PlanKnobs) -> Plan:
    """Build a Plan; ValueError (one line) names the bad flag."""
    _positive(vp=knobs.vp, mbs=knobs.mbs)
    schedule = knobs.schedule or (Schedule.INTERLEAVED_1F1B if knobs.vp > 1 else Schedule.ONE_F_ONE_B)
    return Plan(dims=dims, micro_batch_size=knobs.mbs, virtual_stages=knobs.vp,
                schedule=_choice(Schedule, schedule, "--schedule"), zero_stage=_choice(ZeroStage, knobs.zero, "--zero"),
                recompute=_choice(Recompute, knobs.recompute, "--recompute"),
                sequence_parallel=dims.tp > 1 if knobs.sp is None else knobs.sp,
                cp_kind=_choice(CpKind, knobs.cp_kind, "--cp-kind"), cp_a2a=knobs.cp_a2a,
                offload=_offload_flag(knobs.offload), vocab_parallel=knobs.vocab_parallel,
                fp8_recipe=None if knobs.fp8_recipe is None else _choice(Fp8Recipe, knobs.fp8_recipe, "--fp8-recipe"))


def _offload_flag(text: str) -> dict[OffloadState, OffloadTier]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        state, _, tier = item.partition(":")
        out[_choice(OffloadState, state, "--offload")] = _choice(OffloadTier, tier or "host", "--offload")
    return out


def _positive(**flags: int | None) -> None:
    """Degrees and sizes are >= 1; blame the flag the user typed (not the dp it implies)."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise UserError(f"must be >= 1, got {value}", field=f"--{flag}", fix=f"pass --{flag} 1 or more")


def _choice(enum, value, flag: str):
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(str(e.value) for e in enum)
        raise ValueError(f"{flag}: {value!r} is not one of {known}") from None


def run_estimate(scenario: Scenario, plan: Plan, *, profile: Path | None, timeline: bool,
                 plan_file: Path | None = None) -> Estimate:
    """Price one plan; `fits` and the capacity shown are the usable memory `search` ranks by
    (memory_capacity x [search] memory_fraction), so the two verbs never disagree."""
    try:
        check(plan, scenario)
    except ValueError as err:
        if plan_file is None:
            raise
        raise UserError(str(err), file=plan_file) from None
    hw = datasheet_profile(scenario.cluster) if profile is None else load_profile(profile)
    graph = cached_graph(scenario.model, seq_len=scenario.job.seq_len)  # torch only on a cache miss
    est = estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job, timeline=timeline)
    if not 0 < est.step_time_s < math.inf:
        raise UserError(f"the hardware numbers give a step time of {est.step_time_s:g} s",
                        file=profile or scenario.name, fix="check peak_tflops, efficiencies and bandwidths")
    usable = usable_capacity_bytes(est, scenario)
    return replace(est, memory_capacity_bytes=usable, fits=bool(est.fits) and est.peak_memory_bytes <= usable)


def write_trace(est: Estimate, path: Path) -> None:
    """Chrome trace (chrome://tracing, Perfetto) written atomically: temp file then rename."""
    write_file(path, json.dumps({"traceEvents": est.timeline or [], "displayTimeUnit": "ms"}))


def estimate_json(est: Estimate, plan: Plan) -> str:
    data = est.to_dict()
    data.pop("timeline")
    return json.dumps(data | {"plan": json.loads(plan.to_json())}, indent=2)


def print_estimate(est: Estimate, plan: Plan, *, console: Console) -> None:
    head = Table("step s", "tokens/s/GPU", "MFU", "HFU", "bubble", "micro-batches", "peak GiB", "fits",
                 title=plan.describe())
    head.add_row(f"{est.step_time_s:.3f}", f"{est.tokens_per_s_per_gpu:,.0f}", f"{est.mfu:.1%}", f"{est.hfu:.1%}",
                 f"{est.bubble_fraction:.1%}", str(est.num_micro_batches), f"{est.peak_memory_bytes / GIB:.1f}",
                 "yes" if est.fits else f"no (> {est.memory_capacity_bytes / GIB:.0f})")
    console.print(head)
    if est.implausible:
        console.print(f"note: {est.implausible}", highlight=False)
    times = Table("term", "seconds", "share of step", title="time breakdown (slowest stage; comm = traffic time)")
    for term, seconds in est.time_breakdown_s.items():
        times.add_row(term, f"{seconds:.4f}", f"{seconds / est.step_time_s:.1%}")
    console.print(times)
    terms = list(est.stage_memory[0])
    memory = Table("stage", *terms, "total", title="memory per GPU (GiB)")
    for stage, row in enumerate(est.stage_memory):
        memory.add_row(str(stage), *(f"{row[t] / GIB:.2f}" for t in terms), f"{sum(row.values()) / GIB:.2f}")
    console.print(memory)
