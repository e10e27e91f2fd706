"""Estimates per second of planner.cost.estimate on Llama 3.1 405B / 16,384 H100 (the issue's
case) and DeepSeek-V3 / 2,048 H800 (the MoE worst case: 256 routed experts traced per layer).

Target (issue 4): one estimate of a 405B plan (no timeline) under 5 ms. Two numbers per plan, medians of
--repeats calls (wall and CPU seconds, since the machine may be shared):
- cold: the per-graph memo of block-kind timings is cleared before each call, so every call
  prices the graph's distinct operators for its Split (what the search pays for a new Split);
- warm: repeated calls on one plan (what it pays for a plan sharing a Split with an earlier one).
The per-graph reduction (ops.graph_summary, layer_ops) is built once, before timing, as in any
run. Run: python bench/bench_estimate.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from planner.cost import estimate
from planner.cost.ops import GraphKey, graph_summary
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan, check
from planner.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
TARGET_MS = 5.0
LLAMA_405B = {  # Llama 3 paper Table 4 layout (tp8 pp16 dp128) and neighbours the search would try
    "tp8 pp16 dp128 vp4": Plan(dims={"tp": 8, "pp": 16, "dp": 128}, schedule="interleaved-1f1b",
                                         virtual_stages=4, sequence_parallel=True, zero_stage=1),
    "tp8 pp16 dp128 1f1b": Plan(dims={"tp": 8, "pp": 16, "dp": 128}, sequence_parallel=True, zero_stage=1),
    "tp8 pp8 cp2 dp128 full": Plan(dims={"tp": 8, "pp": 8, "cp": 2, "dp": 128}, sequence_parallel=True,
                                   recompute="full", zero_stage=1),
    "tp4 pp32 dp128 gpipe": Plan(dims={"tp": 4, "pp": 32, "dp": 128}, schedule="gpipe", zero_stage=3),
    "tp8 pp16 dp128 zb": Plan(dims={"tp": 8, "pp": 16, "dp": 128}, schedule="zero-bubble", zero_stage=1),
}
DEEPSEEK_V3 = {  # the DeepSeek-V3 report's layout (pp16 ep64, ZeRO-1) and the search's best
    "pp16 dp128 ep64": Plan(dims={"pp": 16, "dp": 128, "ep": 64}, zero_stage=1),
    "pp32 cp4 dp16 ep8": Plan(dims={"pp": 32, "cp": 4, "dp": 16, "ep": 8}, zero_stage=1),
}
CASES = {"llama3.1-405b_h100x16384": LLAMA_405B, "deepseek-v3_h800x2048": DEEPSEEK_V3}


def timed(fn, *, repeats: int, before=lambda: None) -> tuple[float, float]:
    """Median wall and CPU seconds of `fn` over `repeats` calls (`before` runs untimed)."""
    walls, cpus = [], []
    for _ in range(repeats):
        before()
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def bench(name: str, plans: dict[str, Plan], *, repeats: int) -> float:
    """Print cold and warm medians per plan; return the worst cold median wall seconds."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len)
    hw = datasheet_profile(scenario.cluster)
    memo = graph_summary(GraphKey(graph)).memo
    print(f"{scenario.name}: {scenario.cluster.world_size} GPUs, {len(graph.layers)} layers; "
          f"medians of {repeats} (wall / CPU)")
    worst = 0.0
    for label, plan in plans.items():
        check(plan, scenario)

        def run(plan: Plan = plan):
            return estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job)

        est = run()
        cold_w, cold_c = timed(run, repeats=repeats, before=memo.clear)
        warm_w, warm_c = timed(run, repeats=repeats)
        worst = max(worst, cold_w)
        print(f"  {label:24} cold {cold_w * 1e3:5.2f} / {cold_c * 1e3:5.2f} ms  warm {warm_w * 1e3:5.2f} / "
              f"{warm_c * 1e3:5.2f} ms  {1 / cold_w:6.0f}-{1 / warm_w:6.0f} estimates/s  "
              f"(step {est.step_time_s:.2f} s, MFU {est.mfu:.1%})")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    worst = {name: bench(name, plans, repeats=args.repeats) for name, plans in CASES.items()}
    llama_ms = worst["llama3.1-405b_h100x16384"] * 1e3
    verdict = "ok" if llama_ms < TARGET_MS else "SLOW"
    print(f"405B worst cold median {llama_ms:.2f} ms (target < {TARGET_MS:g} ms: {verdict}); "
          f"DeepSeek-V3 {worst['deepseek-v3_h800x2048'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
