"""Search at 100k-GPU scale: the 1.9T-parameter, 384-expert MoE (hypothetical, models.py) at 128K
context on 98,304 GB200 (NVL72 racks, 64 job GPUs each) with the 3-tier SuperPOD fabric, rank
orders and the mapping pass. Target (issue 15): < 30 s wall and < 2 GiB on 2 cores.

Reports graph extraction apart from the search (the search is the target), wall and CPU seconds
(CPU shows the work when the machine is shared), peak resident memory of the process, the best
plan, the levels its groups climb, and the mapping decision.
Run: python bench/bench_scale.py [--scenario scenarios/moe-1.9t_gb200x98304.toml]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from pathlib import Path

from planner.cost.placement import plan_placement
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import load_scenario
from planner.search import search

REPO = Path(__file__).resolve().parent.parent
TARGET_S, TARGET_GIB = 30.0, 2.0


def main() -> None:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "moe-1.9t_gb200x98304.toml")
    a = p.parse_args()
    sc = load_scenario(a.scenario)
    w, c = time.perf_counter(), time.process_time()
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    print(f"graph: {time.perf_counter() - w:.1f} s wall, {time.process_time() - c:.1f} s CPU "
          f"({len(graph.layers)} layers, seq {sc.job.seq_len})")
    hw = datasheet_profile(sc.cluster)
    w, c = time.perf_counter(), time.process_time()
    result = search(graph, sc, hw=hw)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    s = result.stats
    print(f"search: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss_gib:.2f} GiB; {s.layouts} layouts, "
          f"{s.enumerated:,} plans enumerated, {s.costed} costed")
    best = result.best
    if best is None:
        print(result.nothing_fits)
        return
    plan = best.plan
    print(f"best: {plan.describe()}  order {'-'.join(a.value for a in plan.rank_order)} / "
          f"{'-'.join(a.value for a in plan.expert_rank_order)}  step {best.estimate.step_time_s:.3f} s, "
          f"MFU {best.estimate.mfu:.1%}")
    stage = plan_placement(plan, sc.cluster).stages[0]
    for axis in ("tp", "cp", "dp", "ep", "edp"):
        span = getattr(stage, axis)
        if span.num_ranks > 1:
            print(f"  {axis:4s} {span.num_ranks:6d} ranks: " + " ".join(
                f"{lv.tier.value}:{lv.fan_in}@{lv.bandwidth_gbs:.3g}GB/s" for lv in span.levels))
    mapping = result.device_mapping
    print("mapping: " + ("identity (links are uniform: every node pair and NIC alike, so only the rank order "
                         "moves groups)" if mapping is None else f"{mapping.method}, {mapping.mapped_step_s:.3f} s "
                         f"vs identity {mapping.identity_step_s:.3f} s"))
    ok = wall < TARGET_S and rss_gib < TARGET_GIB
    print(f"target < {TARGET_S:.0f} s wall and < {TARGET_GIB:.0f} GiB: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
