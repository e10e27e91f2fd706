"""Search results as files: plans.csv (every candidate), plan.json, result.json, trace.json.

The report never calls the search or the cost model: `write_search_outputs` turns a SearchResult
into these files once, and the HTML is rendered from them, so `planner report DIR` re-renders
exactly what a search wrote.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from planner.cost import Estimate, TimeTerm
from planner.plan import Plan
from planner.scenario import GIB, Scenario
from planner.search.result import Candidate, SearchResult

RESULT_FORMAT_VERSION = 1
OUTPUT_FILES = ("plans.csv", "plan.json", "result.json", "trace.json", "report.html")
DETAILED_TOP = 20  # fitting plans whose full breakdown result.json keeps (the rest: plans.csv)
DETAILED_PARETO = 40

# Step-time terms copied into plans.csv as time_<term>_s (Estimate.time_breakdown_s keys, fixed
# by CONTRACTS.md). Terms the cost model adds later stay in result.json only, so the CSV header
# never changes under its readers.
TIME_TERMS = (TimeTerm.COMPUTE, TimeTerm.RECOMPUTE, TimeTerm.TP, TimeTerm.CP, TimeTerm.EP, TimeTerm.PP, TimeTerm.DP,
              TimeTerm.EXPOSED_COMM, TimeTerm.BUBBLE, TimeTerm.OPTIMIZER)

PLAN_COLUMNS: tuple[str, ...] = (
    "candidate", "rank", "status", "fits", "pareto", "reason", "plan",
    "dp", "tp", "pp", "cp", "ep", "etp", "edp",
    "micro_batch_size", "num_micro_batches", "virtual_stages", "schedule", "zero_stage",
    "recompute", "sequence_parallel", "rank_order", "expert_rank_order", "blocks_per_stage",
    "expert_placement",
    "step_time_s", "tokens_per_s_per_gpu", "mfu", "hfu", "peak_memory_gib",
    "memory_capacity_gib", "bubble_fraction",
    *(f"time_{t}_s" for t in TIME_TERMS),
    "cp_kind", "cp_a2a", "offload", "vocab_parallel", "offloaded_host_gib", "dp_imbalance", "fp8_recipe", "balance",
)


class Status(enum.StrEnum):
    """A candidate's fate: the winner, a fitting plan, costed but out of memory, or pruned/invalid."""

    BEST = "best"
    FITS = "fits"
    OOM = "oom"
    PRUNED = "pruned"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for dataclasses, pydantic models, enums, numpy scalars and tuples."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def estimate_dict(estimate: Estimate | None) -> dict[str, Any] | None:
    """Estimate.to_dict() without the timeline (that goes to trace.json), JSON-ready."""
    if estimate is None:
        return None
    raw = estimate.to_dict() if hasattr(estimate, "to_dict") else to_jsonable(estimate)
    return {k: to_jsonable(v) for k, v in raw.items() if k != "timeline"}


def status_of(candidate: Candidate, best: Candidate | None) -> Status:
    if candidate is best:
        return Status.BEST
    if candidate.fits:
        return Status.FITS
    return Status.OOM if candidate.estimate is not None else Status.PRUNED


def csv_row(cid: int, candidate: Candidate, *, status: Status, pareto: bool, global_batch: int) -> dict[str, Any]:
    """One plans.csv row; metric columns stay empty for candidates that were never costed."""
    plan: Plan = candidate.plan
    dims = plan.dims
    e = candidate.estimate  # read directly: a full estimate_dict per row was a tenth of a search's wall time
    est: dict[str, Any] = {} if e is None else {
        "num_micro_batches": e.num_micro_batches, "step_time_s": e.step_time_s,
        "tokens_per_s_per_gpu": e.tokens_per_s_per_gpu, "mfu": e.mfu, "hfu": e.hfu,
        "bubble_fraction": e.bubble_fraction, "peak_memory_bytes": e.peak_memory_bytes,
        "memory_capacity_bytes": e.memory_capacity_bytes}
    breakdown = {} if e is None else {str(to_jsonable(k)): v for k, v in e.time_breakdown_s.items()}
    row: dict[str, Any] = {
        "candidate": cid, "rank": candidate.rank, "status": status.value, "fits": bool(candidate.fits),
        "pareto": pareto, "reason": candidate.reason or "", "plan": plan.describe(),
        "dp": dims.dp, "tp": dims.tp, "pp": dims.pp, "cp": dims.cp, "ep": dims.ep, "etp": dims.etp,
        "edp": dims.edp, "micro_batch_size": plan.micro_batch_size,
        "num_micro_batches": est.get("num_micro_batches", plan.num_micro_batches(global_batch)),
        "virtual_stages": plan.virtual_stages, "schedule": plan.schedule.value,
        "zero_stage": int(plan.zero_stage), "recompute": plan.recompute.value,
        "sequence_parallel": plan.sequence_parallel,
        "rank_order": "-".join(a.value for a in plan.rank_order),
        "expert_rank_order": "-".join(a.value for a in plan.expert_rank_order),
        "blocks_per_stage": " ".join(map(str, plan.blocks_per_stage or [])),
        "expert_placement": "custom" if plan.expert_placement else "contiguous",
    }
    for key in ("step_time_s", "tokens_per_s_per_gpu", "mfu", "hfu", "bubble_fraction"):
        row[key] = est.get(key)
    row["peak_memory_gib"] = _gib(est.get("peak_memory_bytes"))
    row["memory_capacity_gib"] = _gib(est.get("memory_capacity_bytes"))
    for term in TIME_TERMS:
        row[f"time_{term}_s"] = breakdown.get(term) if est else None
    row |= {"cp_kind": plan.cp_kind.value, "cp_a2a": plan.cp_a2a, "vocab_parallel": plan.vocab_parallel,
            "offload": " ".join(f"{state.value}:{tier.value}" for state, tier in plan.offload.items()),
            "offloaded_host_gib": _gib((est.get("offloaded_bytes") or {}).get("host")) if est else None,
            "dp_imbalance": (est.get("notes") or {}).get("dp_imbalance") if est else None,
            "fp8_recipe": plan.fp8_recipe.value if plan.fp8_recipe else "",
            "balance": plan.balance.value if plan.balance else ""}
    return row


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def write_plans_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PLAN_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in PLAN_COLUMNS])


def sort_key(row: dict[str, Any]) -> tuple[int, float]:
    """Fitting plans by throughput, then OOM ones by memory, then pruned ones."""
    status = Status(row["status"])
    order = list(Status).index(status)
    match status:
        case Status.BEST | Status.FITS:
            return order, -(row["tokens_per_s_per_gpu"] or 0.0)
        case Status.OOM:
            return order, row["peak_memory_gib"] or math.inf
        case Status.PRUNED:
            return order, 0.0


def write_json(path: Path, data: Any, *, compact: bool = False) -> None:
    """Indented JSON for people, compact for big machine files (the C encoder only runs
    without indent: a 12 MB trace takes ~1 s instead of ~5 s)."""
    text = json.dumps(data, allow_nan=False, default=to_jsonable,
                      **({"separators": (",", ":")} if compact else {"indent": 1}))
    path.write_text(text + "\n")


def chrome_trace(best: Candidate | None, scenario: Scenario) -> dict[str, Any]:
    """The best plan's simulated timeline as a Chrome trace (open in chrome://tracing or Perfetto)."""
    events = []
    if best is not None and best.estimate is not None:
        events = getattr(best.estimate, "timeline", None) or []
    meta = {"scenario": scenario.name, "plan": best.plan.describe() if best is not None else None}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}


def is_dp_zero3(plan: Plan) -> bool:
    d = plan.dims
    return (d.tp, d.pp, d.cp, d.ep, d.etp) == (1, 1, 1, 1, 1) and int(plan.zero_stage) == 3


def is_megatron_default(plan: Plan, *, gpus_per_node: int) -> bool:
    """TP fills one node (up to 8), the rest is PP/DP: the usual hand-written Megatron layout."""
    return plan.dims.tp == min(8, gpus_per_node) and plan.dims.cp == 1


def pick_baselines(candidates: list[Candidate], *, gpus_per_node: int) -> dict[str, int]:
    """Candidate ids of the naive baselines the summary compares against (fastest that fits,
    else the smallest-memory costed one so the report can say by how much it fails)."""
    rules = {"dp_zero3": is_dp_zero3,
             "megatron_tp": lambda p: is_megatron_default(p, gpus_per_node=gpus_per_node)}
    out = {}
    for name, rule in rules.items():
        costed = [(i, c) for i, c in enumerate(candidates) if c.estimate is not None and rule(c.plan)]
        fitting = [(i, c) for i, c in costed if c.fits]
        if fitting:
            out[name] = max(fitting, key=lambda ic: ic[1].estimate.tokens_per_s_per_gpu)[0]
        elif costed:
            out[name] = min(costed, key=lambda ic: ic[1].estimate.peak_memory_bytes)[0]
    return out


def result_dict(result: SearchResult, scenario: Scenario, candidates: list[Candidate]) -> dict[str, Any]:
    """result.json: the scenario, search stats and full estimates of the plans the report draws."""
    index = {id(c): i for i, c in enumerate(candidates)}
    best_id = result.best_index
    baselines = pick_baselines(candidates, gpus_per_node=scenario.cluster.gpus_per_node)
    ranked = sorted((c for c in candidates if c.fits and c.estimate is not None),
                    key=lambda c: -c.estimate.tokens_per_s_per_gpu)[:DETAILED_TOP]
    keep = {best_id, *baselines.values(), *(index[id(c)] for c in ranked),
            *(index[id(c)] for c in result.pareto[:DETAILED_PARETO])} - {None}
    detailed = {str(i): _candidate_dict(candidates[i]) for i in sorted(keep)}
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "scenario": scenario.model_dump(mode="json"),
        "stats": to_jsonable(result.stats),
        "num_candidates": len(candidates),
        "best": best_id,
        "top": [index[id(c)] for c in ranked],
        "baselines": baselines,
        "detailed": detailed,
        "moe": to_jsonable(result.moe),
        "partition": to_jsonable(result.partition),
        "device_mapping": to_jsonable(result.device_mapping),
        "nothing_fits": result.nothing_fits,
    }


def _candidate_dict(candidate: Candidate) -> dict[str, Any]:
    return {
        "rank": candidate.rank,
        "fits": bool(candidate.fits),
        "reason": candidate.reason,
        "plan": candidate.plan.model_dump(mode="json"),
        "estimate": estimate_dict(candidate.estimate),
    }
