"""Estimates per second of planner.cost.estimate on the Llama 3.1 405B / 16,384 H100 scenario.

Target: one estimate (no timeline) under 5 ms. Run: python bench/bench_estimate.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from planner.cost import estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "llama3.1-405b_h100x16384.toml"
PLANS = {  # Llama 3 paper Table 4 layout (tp8 pp16 dp128) and neighbours the search would try
    "tp8 pp16 dp128 vp4": Plan(dims={"tp": 8, "pp": 16, "dp": 128}, schedule="interleaved-1f1b",
                                         virtual_stages=4, sequence_parallel=True, zero_stage=1),
    "tp8 pp16 dp128 1f1b": Plan(dims={"tp": 8, "pp": 16, "dp": 128}, sequence_parallel=True, zero_stage=1),
    "tp8 pp8 cp2 dp128 full": Plan(dims={"tp": 8, "pp": 8, "cp": 2, "dp": 128}, sequence_parallel=True,
                                   recompute="full", zero_stage=1),
    "tp4 pp32 dp128 gpipe": Plan(dims={"tp": 4, "pp": 32, "dp": 128}, schedule="gpipe", zero_stage=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    scenario = load_scenario(SCENARIO)
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len)
    hw = datasheet_profile(scenario.cluster)
    print(f"{scenario.name}: {scenario.cluster.world_size} GPUs, {len(graph.layers)} layers")
    for name, plan in PLANS.items():
        plan.validate_for(scenario)
        estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job)  # warm the per-graph cache
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            est = estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job)
            samples.append(time.perf_counter() - start)
        median = statistics.median(samples)
        print(f"{name:30} median {median * 1e3:6.2f} ms  p90 {sorted(samples)[int(0.9 * len(samples))] * 1e3:6.2f} ms"
              f"  {1 / median:8.0f} estimates/s   (step {est.step_time_s:.2f} s, MFU {est.mfu:.1%})")


if __name__ == "__main__":
    main()
