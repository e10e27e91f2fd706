"""The report's device map: how each parallel group of a plan (planner.plan.rank_grid) sits on the machine."""

from __future__ import annotations

import numpy as np

from planner.plan import Axis, AxisGroups, Plan, device_grid
from planner.scenario import ClusterSpec


def rank_ranges(ranks: list[int]) -> str:
    """Compact text for a rank list: 0-7, or a strided run `0, 8, ..., 56 (step 8)`."""
    if len(ranks) == 1:
        return str(ranks[0])
    steps = {b - a for a, b in zip(ranks, ranks[1:])}
    if len(steps) == 1:
        step = steps.pop()
        if step == 1:
            return f"{ranks[0]}-{ranks[-1]}"
        if len(ranks) > 4:
            return f"{ranks[0]}, {ranks[1]}, ..., {ranks[-1]} (step {step})"
    return ", ".join(str(r) for r in ranks[:8]) + (", ..." if len(ranks) > 8 else "")


def group_summary(group: AxisGroups, *, gpus_per_node: int, nvlink_domain: int) -> dict[str, object]:
    """One row of the device-map table: how GPU 0's group of this axis sits on the machine."""
    first = [int(r) for r in group.members[group.group_of[0]]]
    nodes = sorted({r // gpus_per_node for r in first})
    domains = {r // nvlink_domain for r in first}
    return {
        "axis": group.axis.value,
        "degree": group.degree,
        "num_groups": group.num_groups,
        "example_ranks": rank_ranges(first),
        "example_nodes": rank_ranges(nodes),
        "nodes_per_group": len(nodes),
        "in_nvlink_domain": len(domains) == 1,
    }


def stage_rows(plan: Plan, cluster: ClusterSpec, *, num_blocks: int) -> list[dict[str, object]]:
    """Which layers run where: per pipeline stage, its physical nodes (after the device mapping),
    their GPU type and the transformer blocks of its chunks (chunk c runs on stage c % pp)."""
    grid = device_grid(plan).attention
    by_stage = np.moveaxis(grid, plan.rank_order.index(Axis.PP), 0).reshape(plan.dims.pp, -1)
    blocks = plan.stage_blocks(num_blocks)
    starts = np.cumsum([0, *blocks])
    group_of = cluster.node_group_of()
    rows = []
    for s in range(plan.dims.pp):
        nodes = sorted({int(r) // cluster.gpus_per_node for r in by_stage[s]})
        gpus = sorted({(cluster.node_groups[group_of[n]].gpu.name if cluster.node_groups else cluster.gpu.name)
                       for n in nodes})
        chunks = range(s, plan.num_chunks, plan.dims.pp)
        layers = ", ".join(f"{starts[c]}-{starts[c + 1] - 1}" if blocks[c] else "-" for c in chunks)
        rows.append({"stage": s, "nodes": rank_ranges(nodes), "gpu": " + ".join(gpus),
                     "blocks": sum(blocks[c] for c in chunks), "layers": layers})
    return rows
