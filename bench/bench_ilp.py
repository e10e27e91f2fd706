"""ILP timings and gaps: 128-layer/16-stage partition (target: optimal < 2 s); expert placement
256 experts x 64 ranks x 58 layers (target: < 10 s, gap reported, beats round-robin on Zipf);
device mapping of 16 nodes with a slow NIC and a slow pair. Run: python bench/bench_ilp.py"""

from __future__ import annotations

import time

import numpy as np

from planner.search.ilp import routing as ex
from planner.search import ilp


def bench_partition() -> None:
    times = (0.3,) + (1.0,) * 128 + (3.5,)  # embedding, 128 blocks, a heavy vocabulary head
    for limit in (1e9, 150.0):
        problem = ilp.StagePartitionProblem(
            layer_time_s=times, layer_static_bytes=(5.0,) + (2.0,) * 128 + (5.0,),
            layer_activation_bytes=(0.1,) + (1.0,) * 128 + (3.0,), num_ranks=16,
            rank_inflight=tuple(float(16 - r) for r in range(16)), num_micro_batches=64, memory_limit_bytes=limit)
        start = time.perf_counter()
        result = ilp.partition_stages(problem)
        wall = time.perf_counter() - start
        even = problem.evaluate([9] + [8] * 14 + [9])[0]
        print(f"partition 130 layers -> 16 stages (memory limit {limit:g}): {wall:.2f} s, {result.solve.status.value}, "
              f"gap {result.solve.gap:.1%}; step {result.step_time_s:.1f} vs even split {even:.1f}; "
              f"layers {result.layers_per_chunk}")


def bench_placement() -> None:
    routing = ex.zipf_routing(num_layers=58, num_experts=256, tokens=16384, top_k=8, skew=1.2, seed=0)
    hidden_bytes = 7168 * 2
    topo = ex.Topology(num_ranks=64, ranks_per_node=8, compute_s_per_token=0.27e-6,
                       intra_s_per_token=hidden_bytes / 160e9, inter_s_per_token=hidden_bytes / 50e9)
    start = time.perf_counter()
    result = ilp.place_experts(ilp.ExpertPlacementProblem(routing=routing, topology=topo))
    wall = time.perf_counter() - start
    rr = result.round_robin
    print(f"placement 256 experts x 64 ranks x 58 layers: {wall:.2f} s, {result.method}, gap {result.solve.gap:.1%} "
          f"(bound {result.solve.bound:.4g} s); total {rr.total_s:.4g} -> {result.cost.total_s:.4g} s "
          f"({1 - result.cost.total_s / rr.total_s:.1%} better), all-to-all {rr.traffic_s:.4g} -> "
          f"{result.cost.traffic_s:.4g} s (saved {result.all_to_all_saved_s:.4g} s)")


def bench_mapping() -> None:
    rng = np.random.default_rng(0)
    n = 16
    nic = tuple(12.5 if i == 3 else 50.0 for i in range(n))
    problem = ilp.DeviceMappingProblem(node_bytes=tuple(rng.uniform(1e9, 8e9, n)),
                                       edges=tuple((u, u + 1, 4e9) for u in range(n - 1)), nic_gbs=nic,
                                       pair_gbs={(0, 1): 10.0})
    start = time.perf_counter()
    result = ilp.map_devices(problem)
    print(f"device mapping 16 nodes: {time.perf_counter() - start:.2f} s, {result.solve.status.value}; "
          f"slowest link {result.identity_s:.3f} s (identity) -> {result.slowest_link_s:.3f} s")


if __name__ == "__main__":
    bench_partition()
    bench_placement()
    bench_mapping()
