"""Search speed on the issue's three scenarios (issue 5 targets, 2 cores: GPT-3 175B / 1024 A100
< 5 s; Llama 3.1 405B / 16,384 H100 and DeepSeek-V3 / 2,048 H800 < 20 s).

Each search runs --repeats times on a fresh (shallow) copy of the graph, so the per-graph caches
of the cost model start cold every time; graph extraction is timed apart. Reported: median wall
and CPU seconds (the machine may be shared: CPU time shows the work, wall what a user waits),
and the candidates enumerated, pruned and costed.
Run: python bench/bench_search.py [SCENARIO ...] [--repeats N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import load_scenario
from planner.search import SearchResult, search

REPO = Path(__file__).resolve().parent.parent
CASES = {"gpt3-175b_a100x1024": 5.0, "llama3.1-405b_h100x16384": 20.0, "deepseek-v3_h800x2048": 20.0}


def bench(name: str, target_s: float, *, repeats: int) -> bool:
    sc = load_scenario(REPO / "scenarios" / f"{name}.toml")
    start = time.perf_counter()
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    graph_s = time.perf_counter() - start
    hw = datasheet_profile(sc.cluster)
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        fresh = copy.copy(graph)  # new identity: the cost model's per-graph caches start empty
        w, c = time.perf_counter(), time.process_time()
        result = search(fresh, sc, hw=hw)
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    ok = wall < target_s
    s = result.stats
    print(f"{name}: search wall {wall:.2f} s, CPU {cpu:.2f} s (median of {repeats}; target < {target_s:g} s: "
          f"{'ok' if ok else 'SLOW'}; runs {', '.join(f'{x:.2f}' for x in walls)} s; graph {graph_s:.2f} s)")
    print(f"  enumerated {s.enumerated:,} over {s.layouts:,} layouts | invalid {s.invalid:,} | pruned {s.pruned:,} | "
          f"costed {s.costed:,} | fitting {s.fitting:,}")
    _print_result(result)
    return ok


def _print_result(result: SearchResult) -> None:
    best = result.best
    if best is not None:
        print(f"  best: {best.plan.describe()}  step {best.estimate.step_time_s:.3f} s  MFU {best.estimate.mfu:.1%}  "
              f"peak {best.estimate.peak_memory_bytes / 2**30:.1f} GiB")
    if result.moe:
        m = result.moe
        print(f"  experts: {m.method} gap {_pct(m.gap)} in {m.solve_s:.1f} s; "
              f"total {m.round_robin_s:.3g} -> {m.cost_s:.3g} s (sum over MoE layers)")
    if result.partition:
        p = result.partition
        print(f"  partition: {p.status} gap {_pct(p.gap)} in {p.solve_s:.2f} s; "
              f"even {p.even_step_time_s:.3f} s -> uneven {p.uneven_step_time_s:.3f} s")


def _pct(gap: float | None) -> str:
    return "-" if gap is None else f"{gap:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = args.scenarios or list(CASES)
    if unknown := [n for n in names if n not in CASES]:
        parser.error(f"unknown scenario {unknown[0]}; choose from {', '.join(CASES)}")
    results = [bench(name, CASES[name], repeats=args.repeats) for name in names]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
