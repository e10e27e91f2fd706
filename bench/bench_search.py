"""Search speed on the issue's three scenarios (targets: GPT-3 175B / 1024 A100 < 5 s;
Llama 3.1 405B / 16,384 H100 and DeepSeek-V3 / 2,048 H800 < 20 s). Run: python bench/bench_search.py"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import load_scenario
from planner.search import search

REPO = Path(__file__).resolve().parent.parent
CASES = [("gpt3-175b_a100x1024", 5.0), ("llama3.1-405b_h100x16384", 20.0), ("deepseek-v3_h800x2048", 20.0)]


def bench(name: str, target_s: float) -> bool:
    sc = load_scenario(REPO / "scenarios" / f"{name}.toml")
    start = time.perf_counter()
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    graph_s = time.perf_counter() - start
    result = search(graph, sc, hw=datasheet_profile(sc.cluster))
    s, best = result.stats, result.best
    ok = s.seconds < target_s
    print(f"{name}: search {s.seconds:.2f} s (target < {target_s:g} s, {'ok' if ok else 'SLOW'}; graph {graph_s:.2f} s) | "
          f"enumerated {s.enumerated:,} over {s.layouts:,} layouts, invalid {s.invalid:,}, pruned {s.pruned:,}, "
          f"costed {s.costed:,}, fitting {s.fitting:,}")
    if best is not None:
        print(f"  best: {best.plan.describe()}  step {best.estimate.step_time_s:.3f} s  MFU {best.estimate.mfu:.1%}  "
              f"peak {best.estimate.peak_memory_bytes / 2**30:.1f} GiB")
    if result.moe:
        m = result.moe
        print(f"  experts: {m['method']} gap {m['gap']:.1%} in {m['solve_s']:.1f} s; a2a saved {m['all_to_all_saved_s']:.3g} s, "
              f"total {m['round_robin_s']:.3g} -> {m['cost_s']:.3g} s (sum over MoE layers)")
    if result.partition:
        p = result.partition
        print(f"  partition: {p['status']} gap {p['gap']:.1%} in {p['solve_s']:.2f} s; even {p['even_step_time_s']:.3f} s "
              f"-> uneven {p['uneven_step_time_s']:.3f} s")
    return ok


if __name__ == "__main__":
    names = sys.argv[1:] or [n for n, _ in CASES]
    results = [bench(n, t) for n, t in CASES if n in names]
    sys.exit(0 if all(results) else 1)
