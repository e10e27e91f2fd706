"""Two Llama 3.1 405B plans on a 16,384-GPU H100 SuperPOD under different fabrics, with the reason.

Same plans (tp8 x pp16 x dp128 as in Dubey et al. 2024 Table 4 without CP, and tp8 x pp4 x dp512,
1F1B, mbs 1, ZeRO-1, SP), same GPUs; only [cluster.fabric] changes:
  flat            no fabric table: the calibrated two-tier rule (one NIC tier, hardware/topology.py)
  2-tier          NVLink 8, leaf 256 (SU), spine 16,384 (a rail-plane 2-tier fat tree; hypothetical)
  3-tier          the SuperPOD RA's NVLink 8, leaf 256, spine 2,048, core 16,384, all 1:1
  3-tier tapered  the same with a 2:1 spine-to-core taper
  3-tier ECMP     the same with static ECMP hashing above the leaves instead of adaptive routing
For each: step time, data-parallel / pipeline / tensor-parallel milliseconds, the levels a dp
group climbs (tier:fan-in@GB/s per flow) and the outermost tier each pipeline boundary crosses.
That is the explanation. pp16: a stage is 1,024 GPUs, so its dp groups (one GPU per node) span
4 SUs inside one 2,048-GPU pod and never reach the core; only the 7 boundaries between pods do.
pp4: a stage is 4,096 GPUs, two pods, so dp adds a core level. A non-blocking 3-tier costs only
the core's extra hop latency and one more reduce-scatter/all-gather level on 1/256 of the
buffer (microseconds); a 2:1 core taper halves the core level's bandwidth (boundaries slow 2x);
ECMP hashing above the leaves loads the busiest uplink with several flows (balls into bins),
which costs tens to hundreds of milliseconds.
Run: python bench/bench_fabric.py
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from planner import cost
from planner.cost.placement import plan_placement
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.scenario import FABRIC_PRESETS, LoadBalancing, load_scenario

REPO = Path(__file__).resolve().parent.parent
PLANS = [Plan.model_validate({"dims": {"tp": 8, "pp": 16, "dp": 128}, "micro_batch_size": 1, "zero_stage": 1,
                              "sequence_parallel": True}),
         Plan.model_validate({"dims": {"tp": 8, "pp": 4, "dp": 512}, "micro_batch_size": 1, "zero_stage": 1,
                              "sequence_parallel": True})]


def fabrics() -> dict[str, object]:
    three = FABRIC_PRESETS["superpod-h100-3tier"]
    return {"flat": None, "2-tier": FABRIC_PRESETS["superpod-h100-2tier"], "3-tier": three,
            "3-tier tapered 2:1": FABRIC_PRESETS["superpod-h100-3tier-tapered"],
            "3-tier ECMP": three.model_copy(update={"load_balancing": LoadBalancing.ECMP})}


def main() -> None:
    warnings.filterwarnings("ignore")
    sc = load_scenario(REPO / "scenarios" / "llama3.1-405b_h100x16384.toml")
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    for plan in PLANS:
        print(f"\nplan: {plan.describe()} on {sc.cluster.world_size} x {sc.cluster.gpu.name}")
        print(f"{'fabric':20s} {'step ms':>11s} {'dp ms':>8s} {'pp ms':>7s} {'tp ms':>8s}  dp levels (tier:fan-in@GB/s) | "
              "pipeline boundaries by outermost tier")
        for name, fabric in fabrics().items():
            cluster = sc.cluster.model_copy(update={"fabric": fabric})
            e = cost.estimate(graph, plan, hw=datasheet_profile(cluster), cluster=cluster, job=sc.job)
            place = plan_placement(plan, cluster)
            dp = " ".join(f"{lv.tier.value}:{lv.fan_in}@{lv.bandwidth_gbs:.3g}" for lv in place.stages[0].dp.levels)
            tops = Counter(s.levels[-1].tier.value for s in place.boundaries if s.levels)
            b = e.time_breakdown_s
            print(f"{name:20s} {e.step_time_s * 1e3:11.3f} {b['dp'] * 1e3:8.1f} {b['pp'] * 1e3:7.2f} {b['tp'] * 1e3:8.1f}  "
                  f"{dp or '(two-tier rule)'} | {dict(tops) or '-'}")


if __name__ == "__main__":
    main()
