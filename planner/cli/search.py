"""`planner search`: trace, search with a progress bar, print the ranked table, write outputs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.scenario import GIB, Scenario
from planner.search import SearchResult, search



def hardware_for(scenario: Scenario, profile: Path | None):
    from planner.hardware import datasheet_profile, load_profile

    return datasheet_profile(scenario.cluster) if profile is None else load_profile(profile)


def run_search(scenario: Scenario, *, top: int, out: Path | None, profile: Path | None,
               routing_trace: Path | None, console: Console, prefetch=None) -> SearchResult:
    """Everything the verb does; returns the result (cli turns nothing-fits into exit 2)."""
    from planner.search.ilp import load_routing_trace
    from planner.graph import cached_graph
    from planner.report import warm_assets, write_search_outputs
    from planner.report.output import check_output_dir

    out_dir = check_output_dir(out or Path("reports") / scenario.name, flag="--out")  # before the search
    hw = hardware_for(scenario, profile)
    routing = load_routing_trace(routing_trace) if routing_trace is not None else None
    if routing is not None:
        check_routing_matches(routing, scenario, routing_trace)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("tracing model", total=None, note="")
        if prefetch is not None:  # a forked child traces the model: prepare the report meanwhile
            warm_assets()
        graph = cached_graph(scenario.model, seq_len=scenario.job.seq_len, prefetch=prefetch)  # torch only on a miss
        bar.update(task, description="searching")
        result = search(graph, scenario, hw=hw, top_k=top, routing=routing,
                        progress=lambda costed, _: bar.update(task, note=f"{costed} plans costed"))
    console.print(result_table(result, scenario, top=top))
    for note in plausibility_notes(result, top=top):
        console.print(note, highlight=False)
    console.print(stats_line(result))
    if result.best is not None:
        write_search_outputs(result, scenario, out_dir)
    return result


def check_routing_matches(routing, scenario: Scenario, path: Path) -> None:
    """A routing trace must come from this model: its experts and MoE layers, one for one."""
    from planner.errors import UserError
    from planner.search.ilp.routing import check_matches

    model = scenario.model
    if not model.is_moe:
        raise UserError(f"model {model.name} has no experts to place", file=path, field="--routing",
                        fix="drop --routing, or use an MoE scenario")
    check_matches(routing, num_layers=model.num_moe_layers, num_experts=model.num_local_experts, path=path)


def result_json(result: SearchResult, scenario: Scenario, *, top: int, out: Path) -> str:
    """`planner search --json`: one object, the ranked plans with their estimates (no timeline)."""
    import json

    from planner.report import to_jsonable

    def entry(cand) -> dict:
        est = cand.estimate.to_dict()
        est.pop("timeline", None)
        return {"rank": cand.rank, "describe": cand.plan.describe(), "plan": json.loads(cand.plan.to_json()),
                "estimate": est}

    s = result.stats
    return json.dumps(to_jsonable({
        "scenario": scenario.name, "world_size": scenario.cluster.world_size, "out": str(out),
        "stats": {"enumerated": s.enumerated, "layouts": s.layouts, "invalid": s.invalid, "pruned": s.pruned,
                  "costed": s.costed, "tuned": s.tuned, "fitting": s.fitting, "seconds": s.seconds},
        "best": entry(result.best) if result.best is not None else None,
        "plans": [entry(c) for c in result.top[:top]], "nothing_fits": result.nothing_fits}), indent=2)


def stats_line(result: SearchResult) -> str:
    s = result.stats
    tuned = f" + {s.tuned:,} ILP variants" if s.tuned else ""
    return (f"{s.enumerated:,} plans enumerated over {s.layouts:,} layouts = {s.invalid:,} invalid + {s.pruned:,} "
            f"pruned + {s.costed - s.tuned:,} costed{tuned}; {s.fitting:,} fit ({s.seconds:.1f} s)")


def _seconds(value: float) -> str:
    """Two decimals without a "-0.00": float noise (a bubble of -1e-15 s) rounds to zero."""
    return f"{round(value, 2) + 0.0:.2f}"


def plausibility_notes(result: SearchResult, *, top: int) -> list[str]:
    """The reason, once, for the listed plans whose MFU reaches the best published run of their
    class (cost/plausibility.py): the first such plan's full line, then the others' ranks."""
    flagged = [c for c in result.top[:top] if c.estimate is not None and c.estimate.implausible]
    if not flagged:
        return []
    notes = [f"plan #{flagged[0].rank}: {flagged[0].estimate.implausible}"]
    if len(flagged) > 1:
        mfus = [c.estimate.mfu for c in flagged[1:]]
        notes.append(f"plans {', '.join(f'#{c.rank}' for c in flagged[1:])}: near or above the same published best (MFU "
                     f"{min(mfus):.1%}-{max(mfus):.1%})")
    return notes


def result_table(result: SearchResult, scenario: Scenario, *, top: int) -> Table:
    table = Table("#", "plan", "step s", "tokens/s/GPU", "MFU", "peak GiB", "compute", "comm exposed", "bubble",
                  title=f"best plans: {scenario.name} ({scenario.cluster.world_size} x {scenario.cluster.gpu.name})")
    for cand in result.top[:top]:
        e = cand.estimate
        br = e.time_breakdown_s
        table.add_row(str(cand.rank), cand.plan.describe() + (" uneven" if cand.plan.blocks_per_stage else "")
                      + (" placed" if cand.plan.expert_placement else ""), f"{e.step_time_s:.3f}",
                      f"{e.tokens_per_s_per_gpu:,.0f}", f"{e.mfu:.1%}", f"{e.peak_memory_bytes / GIB:.1f}",
                      *(_seconds(br.get(term, 0.0)) for term in ("compute", "exposed_comm", "bubble")))
    return table
