"""Which network tier a communicator group spans, and how long its collectives take there.

The rank grid (plan.rank_order, last axis fastest) puts a group's ranks at base + k*stride; the
cluster (nvlink_domain, per-node and per-node-pair link overrides) says which of them share the
fast tier and how slow the slowest NIC path is. Times come from the HardwareProfile's fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.hardware.profile import Collective, HardwareProfile, Tier
from planner.scenario import ClusterSpec

_US = 1e-6
_GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpan:
    """A communicator group laid out on the rank grid: ranks base + k*stride for k < num_ranks.

    `ranks_per_domain` of them share one NVLink domain; the rest reach it over the NIC fabric.
    """

    num_ranks: int
    stride: int
    ranks_per_domain: int
    nic_scale: float = 1.0  # slowest NIC the group touches / the cluster's nominal NIC (overrides)

    @property
    def tier(self) -> Tier:
        return Tier.INTRA_NODE if self.ranks_per_domain >= self.num_ranks else Tier.INTER_NODE


def group_span(cluster: ClusterSpec, *, num_ranks: int, stride: int) -> GroupSpan:
    """Place a strided group on the cluster (the rank grid puts rank r on node r // gpus_per_node)."""
    return composite_span(cluster, [(num_ranks, stride)])


def composite_span(cluster: ClusterSpec, axes: list[tuple[int, int]]) -> GroupSpan:
    """A group varying several rank-grid axes at once, each given as (degree, stride).

    An axis with stride s contributes min(degree, domain // s) distinct members to one NVLink
    domain when s divides the domain, else 1 (every member on its own node).
    """
    domain = cluster.nvlink_domain
    num_ranks, per_domain = 1, 1
    for degree, stride in axes:
        num_ranks *= degree
        if stride < domain and domain % stride == 0:
            per_domain *= min(degree, domain // stride)
    stride = min((s for d, s in axes if d > 1), default=1)
    slowest = _slowest_inter_gbs(cluster, num_ranks=num_ranks, stride=stride)
    return GroupSpan(num_ranks=num_ranks, stride=stride, ranks_per_domain=min(per_domain, num_ranks),
                     nic_scale=slowest / cluster.network.inter_node_gbs)


def _slowest_inter_gbs(cluster: ClusterSpec, *, num_ranks: int, stride: int) -> float:
    """Collectives run at the pace of the slowest participant: min over nodes/pairs some group spans."""
    net = cluster.network
    if num_ranks * stride <= cluster.gpus_per_node or not (net.node_overrides or net.pair_overrides):
        return net.inter_node_gbs
    node_gbs = {o.node: o.inter_node_gbs for o in net.node_overrides}
    slowest = min([net.inter_node_gbs, *node_gbs.values()])
    for pair in net.pair_overrides:
        if _pair_in_some_group(cluster, pair.nodes, num_ranks=num_ranks, stride=stride):
            slowest = min(slowest, pair.inter_node_gbs)
    return slowest


def _pair_in_some_group(cluster: ClusterSpec, nodes: tuple[int, int], *, num_ranks: int, stride: int) -> bool:
    """Whether some group of this stride has ranks on both nodes (group of rank r: r mod stride, block)."""
    g = cluster.gpus_per_node
    block = num_ranks * stride

    def groups(node: int) -> set[tuple[int, int]]:
        return {(r // block, r % stride) for r in range(node * g, (node + 1) * g)}

    return bool(groups(nodes[0]) & groups(nodes[1]))


def group_collective_s(hw: HardwareProfile, collective: Collective, size_bytes: float, *, span: GroupSpan) -> float:
    """Time of a collective on a group that may straddle NVLink domains.

    Inside one domain: the intra fit. Across domains, ring collectives run at one NIC's bus
    bandwidth per GPU: the hierarchical ideal (k members of a node pooling k NICs) is not what
    training jobs see, because the node's other GPUs drive their own groups' traffic on those
    NICs at the same time and NCCL crosses nodes with one NIC per ring channel. Calibrated on
    the Megatron-Core DP=48 H100 rows and the llm-foundry FSDP A100 rows (SOURCES.md #3, #11).
    All-to-all sends (n - k)/n of the buffer off-domain over the GPU's own NIC.
    """
    n = span.num_ranks
    if n <= 1 or size_bytes <= 0:
        return 0.0
    if span.tier == Tier.INTRA_NODE:
        return hw.collective_s(collective, size_bytes, num_ranks=n, tier=Tier.INTRA_NODE)
    inter = hw.collective_fit(collective, tier=Tier.INTER_NODE, num_ranks=n)
    intra = hw.collective_fit(collective, tier=Tier.INTRA_NODE, num_ranks=max(2, span.ranks_per_domain))
    nic_scale = span.nic_scale
    k = span.ranks_per_domain
    match collective:
        case Collective.ALL_TO_ALL:
            per_peer = a2a_peer_efficiency(size_bytes / n)
            off = size_bytes * (n - k) / n / (inter.bandwidth_gbs * nic_scale * per_peer * _GB)
            on = size_bytes * (k - 1) / n / (intra.bandwidth_gbs * _GB)
            return hw.sync_wait_s + inter.latency_us * _US + max(off, on)
        case Collective.SEND_RECV:
            return hw.sync_wait_s + inter.latency_us * _US + size_bytes / (inter.bandwidth_gbs * nic_scale * _GB)
        case _:
            bus_gbs = min(intra.bandwidth_gbs, inter.bandwidth_gbs * nic_scale)
            steps = collective.traffic_factor(n) * size_bytes
            return hw.sync_wait_s + _latency_steps(collective, n) * inter.latency_us * _US + steps / (bus_gbs * _GB)


# Per-peer message size at which an all-to-all reaches half the link rate: each peer is its own
# send/recv with a fixed cost, so small messages under-use the NIC (nccl-tests alltoall_perf and
# sendrecv_perf on 400G IB: half of the peak bus bandwidth near 64 KiB per peer).
A2A_HALF_BANDWIDTH_BYTES = 64 * 2**10


def a2a_peer_efficiency(per_peer_bytes: float) -> float:
    return per_peer_bytes / (per_peer_bytes + A2A_HALF_BANDWIDTH_BYTES)


def _latency_steps(collective: Collective, n: int) -> float:
    """Hop latencies on the critical path across nodes, as NCCL's own tuning model counts them
    (nccl src/graph/tuning.cc): ring all-gather / reduce-scatter take n - 1 steps (NCCL has no
    tree for them); all-reduce takes the cheaper of a ring's 2(n - 1) and a tree's 2 log2 n."""
    match collective:
        case Collective.ALL_GATHER | Collective.REDUCE_SCATTER:
            return float(n - 1)
        case Collective.ALL_REDUCE:
            return min(2.0 * (n - 1), 2.0 * math.log2(n))
        case _:
            return 1.0


def p2p_s(hw: HardwareProfile, size_bytes: float, *, span: GroupSpan) -> float:
    """One point-to-point transfer between neighbours of `span` (pipeline activations)."""
    if size_bytes <= 0:
        return 0.0
    fit = hw.collective_fit(Collective.SEND_RECV, tier=span.tier, num_ranks=2)
    scale = span.nic_scale if span.tier == Tier.INTER_NODE else 1.0
    return hw.sync_wait_s + fit.latency_us * _US + size_bytes / (fit.bandwidth_gbs * scale * _GB)
