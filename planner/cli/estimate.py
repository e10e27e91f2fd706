"""`planner estimate`: one plan (from plan.json or flags) priced by the cost model, as tables or JSON."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from planner.cost import Estimate, estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile, load_profile
from planner.plan import Plan, Recompute, Schedule, ZeroStage, check
from planner.scenario import Scenario

GIB = 2**30


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanFlags:
    """The CLI's plan flags; None means 'not given' (dp defaults to world / (tp*pp*cp))."""

    tp: int = 1
    pp: int = 1
    dp: int | None = None
    cp: int = 1
    ep: int = 1
    etp: int = 1
    vp: int = 1
    mbs: int = 1
    zero: int = 0
    recompute: str = "none"
    schedule: str | None = None
    sp: bool | None = None


def plan_from_flags(flags: PlanFlags, scenario: Scenario) -> Plan:
    """Build and validate a Plan; ValueError (one line) names the bad flag."""
    world = scenario.cluster.world_size
    model_parallel = flags.tp * flags.pp * flags.cp
    if flags.dp is None and world % model_parallel:
        raise ValueError(f"--tp*--pp*--cp = {model_parallel} does not divide the {world} GPUs; change them or pass --dp")
    dp = flags.dp if flags.dp is not None else world // model_parallel
    schedule = flags.schedule or (Schedule.INTERLEAVED_1F1B if flags.vp > 1 else Schedule.ONE_F_ONE_B)
    return Plan(dims={"dp": dp, "tp": flags.tp, "pp": flags.pp, "cp": flags.cp, "ep": flags.ep, "etp": flags.etp},
                micro_batch_size=flags.mbs, virtual_stages=flags.vp, schedule=_choice(Schedule, schedule, "--schedule"),
                zero_stage=_choice(ZeroStage, flags.zero, "--zero"),
                recompute=_choice(Recompute, flags.recompute, "--recompute"),
                sequence_parallel=flags.tp > 1 if flags.sp is None else flags.sp)


def _choice(enum, value, flag: str):
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(str(e.value) for e in enum)
        raise ValueError(f"{flag}: {value!r} is not one of {known}") from None


def run_estimate(scenario: Scenario, plan: Plan, *, profile: Path | None, timeline: bool) -> Estimate:
    check(plan, scenario)
    hw = datasheet_profile(scenario.cluster) if profile is None else load_profile(profile)
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len)
    return estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job, timeline=timeline)


def write_trace(est: Estimate, path: Path) -> None:
    """Chrome trace (chrome://tracing, Perfetto) written atomically: temp file then rename."""
    payload = json.dumps({"traceEvents": est.timeline or [], "displayTimeUnit": "ms"})
    fd, tmp = tempfile.mkstemp(dir=path.parent if path.parent.exists() else None, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(payload)
    os.replace(tmp, path)


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
    times = Table("term", "seconds", "share of step", title="time breakdown (slowest stage; comm = traffic time)")
    for term, seconds in est.time_breakdown_s.items():
        times.add_row(term, f"{seconds:.4f}", f"{seconds / est.step_time_s:.1%}")
    console.print(times)
    terms = list(est.stage_memory[0])
    memory = Table("stage", *terms, "total", title="memory per GPU (GiB)")
    for stage, row in enumerate(est.stage_memory):
        memory.add_row(str(stage), *(f"{row[t] / GIB:.2f}" for t in terms), f"{sum(row.values()) / GIB:.2f}")
    console.print(memory)
