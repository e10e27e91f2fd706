"""Per-node and per-node-pair NIC bandwidth of a cluster: overrides, or a measured link table.

One lookup for the cost model, the device-mapping search and the report: the typed-in
overrides ([cluster.network] node_overrides / pair_overrides) and a profile's measured table
(`planner profile --links`, LinkTable) say the same thing, a bandwidth per node and per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.scenario import ClusterSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLinks:
    """nic_gbs[i]: NIC bandwidth of node i per GPU; pair_gbs[(i, j)], i < j: a pair that differs."""

    nominal_gbs: float
    nic_gbs: np.ndarray
    pair_gbs: dict[tuple[int, int], float]

    def link_gbs(self, i: int, j: int) -> float:
        """Bandwidth between two nodes: the pair's own, else the slower NIC of the two."""
        return self.pair_gbs.get((min(i, j), max(i, j)), float(min(self.nic_gbs[i], self.nic_gbs[j])))

    def group_gbs(self, nodes: np.ndarray) -> np.ndarray:
        """Slowest link each group touches; nodes: [num_groups, members] node ids (repeats allowed)."""
        slowest = self.nic_gbs[nodes].min(axis=1)
        if self.pair_gbs:
            present = np.zeros((nodes.shape[0], len(self.nic_gbs)), dtype=bool)
            np.put_along_axis(present, nodes, True, axis=1)
            for (i, j), gbs in self.pair_gbs.items():
                both = present[:, i] & present[:, j]
                slowest = np.where(both, np.minimum(slowest, gbs), slowest)
        return slowest


def node_links(cluster: ClusterSpec) -> NodeLinks:
    """NIC bandwidth per node and the pairs that differ, from overrides and the measured table.

    A measured table sets each measured pair; a node's NIC is the fastest pair it was measured
    on (a node is never faster than its own NIC), so an island of slow NICs shows up both as
    slow pairs and slow nodes. Typed overrides win over the table.
    """
    net = cluster.network
    nic = np.full(cluster.num_nodes, net.inter_node_gbs, dtype=float)
    pairs: dict[tuple[int, int], float] = {}
    if net.links is not None:
        measured = net.links.pair_gbs()
        pairs |= measured
        best = np.zeros(cluster.num_nodes)
        for (i, j), gbs in measured.items():
            best[i], best[j] = max(best[i], gbs), max(best[j], gbs)
        nic = np.where(best > 0, best, nic)
    for o in net.node_overrides:
        nic[o.node] = o.inter_node_gbs
    for p in net.pair_overrides:
        pairs[(min(p.nodes), max(p.nodes))] = p.inter_node_gbs
    # a pair equal to the slower NIC adds nothing; keeping only real differences keeps lookups short
    pairs = {k: v for k, v in pairs.items() if v != min(nic[k[0]], nic[k[1]])}
    return NodeLinks(nominal_gbs=net.inter_node_gbs, nic_gbs=nic, pair_gbs=pairs)
