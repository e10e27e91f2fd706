"""The report's device map: how each parallel group of a plan (planner.plan.rank_grid) sits on the machine."""

from __future__ import annotations

from planner.plan import AxisGroups


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
