"""Which links a communicator group crosses, and how long its collectives take there.

Groups arrive as their members' physical ranks (node * gpus_per_node + local GPU: the plan's rank
grid after its device mapping), every group of one axis at once, because they run concurrently
and share uplinks. A group is timed on its own links: the NICs and node pairs it touches
(overrides or a measured link table), and, on a cluster with a [cluster.fabric], the tiers it
spans (hardware/fabric.py). Clusters without a fabric use the two-tier rule below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.hardware import fabric as fab
from planner.hardware.links import node_links
from planner.hardware.profile import Collective, HardwareProfile, Tier
from planner.scenario import ClusterSpec

_US = 1e-6
_GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpan:
    """Where one communicator group lies: its size, members per NVLink domain, the slowest NIC
    it touches (relative to the cluster's nominal NIC) and, on a tiered fabric, its levels."""

    num_ranks: int
    stride: int
    ranks_per_domain: int
    nic_scale: float = 1.0
    levels: tuple[fab.TierLevel, ...] = ()
    leaf_latency_us: float = 0.0  # the fabric's first NIC tier latency (what the profile's fit stands for)
    rail_pxn: bool = False  # rail-optimised fabric: NCCL PXN forwards off-node bytes over NVLink

    @property
    def tier(self) -> Tier:
        return Tier.INTRA_NODE if self.ranks_per_domain >= self.num_ranks else Tier.INTER_NODE


def strided_members(world: int, axes: list[tuple[int, int]]) -> np.ndarray:
    """Every group of a rank-grid axis set given as (degree, stride): [num_groups, members]."""
    ranks = np.arange(world)
    coord = np.zeros(world, dtype=np.int64)
    base = ranks.copy()
    mult = 1
    for degree, stride in axes:
        coord += ((ranks // stride) % degree) * mult
        base -= ((ranks // stride) % degree) * stride
        mult *= degree
    order = np.lexsort((coord, base))
    return ranks[order].reshape(-1, mult)


def group_span(cluster: ClusterSpec, *, num_ranks: int, stride: int) -> GroupSpan:
    """The worst group of a strided axis on the identity placement (rank r on node r // gpus_per_node)."""
    return composite_span(cluster, [(num_ranks, stride)])


def composite_span(cluster: ClusterSpec, axes: list[tuple[int, int]]) -> GroupSpan:
    """A group varying several rank-grid axes at once, each given as (degree, stride)."""
    return axis_spans(cluster, strided_members(cluster.world_size, axes))[0]


def axis_spans(cluster: ClusterSpec, members: np.ndarray, *, stage_of: np.ndarray | None = None,
               num_stages: int = 1) -> list[GroupSpan]:
    """One GroupSpan per pipeline stage for every group of one axis (members: physical ranks).

    Each stage gets its worst group: fewest members per domain, slowest NIC. Congestion counts
    all groups of the axis (every stage syncs at the same time). Vectorised over the groups:
    a 98,304-GPU plan's axes take milliseconds.
    """
    n = members.shape[1]
    stage_of = np.zeros(members.shape[0], dtype=np.int64) if stage_of is None else stage_of
    if n == 1:
        return [GroupSpan(num_ranks=1, stride=1, ranks_per_domain=1)] * num_stages
    ranks = members if _ascending(members) else np.sort(members, axis=1)
    ranks = ranks.astype(np.int32, copy=False) if cluster.world_size < 2**31 else ranks  # half the memory traffic
    sizes = _domain_sizes(cluster)
    distinct = _touched_by_translation(ranks, sizes)
    reach = np.stack([n // d for d in distinct] + [np.full(members.shape[0], n)])  # [tier, group]
    nic = _nic_scale(cluster, ranks)
    senders = _senders(ranks, distinct, sizes) if cluster.fabric is not None else None
    stride = int(np.diff(ranks[0]).min())
    worst_reach, worst_nic, present = _per_stage_min(stage_of, reach, nic, num_stages=num_stages)
    fabric = cluster.fabric
    out, built = [], {}
    for s in range(num_stages):
        if not present[s]:  # no group of this axis on the stage
            out.append(GroupSpan(num_ranks=n, stride=stride, ranks_per_domain=n))
            continue
        key = (tuple(int(v) for v in worst_reach[:, s]), float(worst_nic[s]))
        if key not in built:  # stages alike in reach and NIC share one span
            k, scale = key
            levels = () if senders is None else fab.build_levels(
                fabric, reach=list(k), senders=senders, nic_scale=scale,
                nominal_gbs=(cluster.network.intra_node_gbs, cluster.network.inter_node_gbs))
            built[key] = GroupSpan(
                num_ranks=n, stride=stride, ranks_per_domain=min(k[0], n), nic_scale=scale, levels=levels,
                leaf_latency_us=0.0 if fabric is None else fabric.tiers[1].latency_us,
                rail_pxn=fabric is not None and fabric.rail_optimized and cluster.gpus_per_node > 1)
        out.append(built[key])
    return out


def _touched_by_translation(ranks: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """_domains_touched, counted once per translation class: groups of a rank-grid axis share one
    offset pattern (without a device mapping), and every tier size divides the largest, so two
    groups whose first members agree modulo the largest size touch alike at every tier."""
    offsets = ranks[0] - ranks[0, 0]
    if ranks.shape[0] < 64 or not np.array_equal(ranks - ranks[:, :1], np.broadcast_to(offsets, ranks.shape)):
        return _domains_touched(ranks, sizes)
    residue, inverse = np.unique(ranks[:, 0] % max(sizes), return_inverse=True)
    classes = _domains_touched(residue[:, None] + offsets[None, :], sizes)
    return [c[inverse] for c in classes]


def _domains_touched(ranks: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per tier, per group: how many domains of that tier its (ascending) members touch. A group
    inside one domain stays inside one at every outer tier, so only the others are re-counted."""
    out, spread = [], None  # None: every group still spans several domains
    touched = np.ones(ranks.shape[0], dtype=np.int64)
    for size in sizes:
        touched = touched.copy()
        sub = ranks if spread is None else ranks[spread]
        if sub.shape[0]:
            ids = sub >> (size.bit_length() - 1) if size & (size - 1) == 0 else sub // size
            counts = 1 + np.count_nonzero(ids[:, 1:] != ids[:, :-1], axis=1)
            if spread is None:
                touched, spread = counts, np.flatnonzero(counts > 1)
            else:
                touched[spread] = counts
                spread = spread[counts > 1]
        out.append(touched)
    return out


def _per_stage_min(stage_of: np.ndarray, reach: np.ndarray, nic: np.ndarray, *,
                   num_stages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stage: the smallest reach on every tier and the slowest NIC scale of its groups."""
    if num_stages == 1:
        return reach.min(axis=1, keepdims=True), nic.min(keepdims=True).reshape(1), np.ones(1, dtype=bool)
    ordered = bool((stage_of[1:] >= stage_of[:-1]).all())  # rows already by stage (pp outermost)
    order = np.arange(len(stage_of)) if ordered else np.argsort(stage_of, kind="stable")
    sorted_stages = stage_of[order]
    present = np.zeros(num_stages, dtype=bool)
    present[sorted_stages] = True
    starts = np.searchsorted(sorted_stages, np.arange(num_stages))
    starts = np.minimum(starts, len(order) - 1)
    return (np.minimum.reduceat(reach[:, order], starts, axis=1), np.minimum.reduceat(nic[order], starts), present)


def _ascending(members: np.ndarray) -> bool:
    return bool((members[:, 1:] > members[:, :-1]).all())


def _domain_sizes(cluster: ClusterSpec) -> list[int]:
    """GPUs per domain of each tier below the outermost (which joins everything)."""
    if cluster.fabric is None:
        return [cluster.nvlink_domain]
    return [t.size_gpus for t in cluster.fabric.tiers[:-1]]


def _nic_scale(cluster: ClusterSpec, members: np.ndarray) -> np.ndarray:
    """Per group: slowest NIC or node pair it crosses over the nominal NIC (1 inside a node)."""
    if not cluster.network.heterogeneous:
        return np.ones(members.shape[0])
    links = node_links(cluster)
    nodes = members // cluster.gpus_per_node  # rows ascending
    crosses = nodes[:, -1] != nodes[:, 0]
    return np.where(crosses, links.group_gbs(nodes) / links.nominal_gbs, 1.0)


def _senders(members: np.ndarray, distinct: list[np.ndarray], sizes: list[int]) -> list[int]:
    """Per tier t >= 1: in the busiest tier-(t-1) domain, the GPUs whose group leaves it (C4)."""
    out = [0]
    for t, size in enumerate(sizes):
        leaves = distinct[t] > 1
        if leaves.all():
            out.append(size)  # every GPU's group leaves its domain
        elif not leaves.any():
            out.append(0)
        else:
            out.append(int(np.bincount(members[leaves].ravel() // size).max()))
    return out


def group_collective_s(hw: HardwareProfile, collective: Collective, size_bytes: float, *, span: GroupSpan) -> float:
    """Time of a collective on a group that may straddle NVLink domains.

    With a tiered fabric: the hierarchical algorithms of hardware/fabric.py on the group's
    levels. Without one (two tiers): inside one domain, the intra fit; across domains, ring
    collectives run at min(NVLink bus bandwidth, k NICs) where k is the group's members per
    domain (ring_bus_gbs). All-to-all sends (n - k)/n of the buffer off-domain over the GPU's own
    NIC.
    """
    n = span.num_ranks
    if n <= 1 or size_bytes <= 0:
        return 0.0
    if span.levels:
        return hw.sync_wait_s + _fabric_s(hw, collective, size_bytes, span=span)
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
            bus_gbs = ring_bus_gbs(intra_gbs=intra.bandwidth_gbs, nic_gbs=inter.bandwidth_gbs * nic_scale, k=k)
            steps = collective.traffic_factor(n) * size_bytes
            return hw.sync_wait_s + _latency_steps(collective, n) * inter.latency_us * _US + steps / (bus_gbs * _GB)


def ring_bus_gbs(*, intra_gbs: float, nic_gbs: float, k: int) -> float:
    """Bus bandwidth of a ring collective whose group has k members in each NVLink domain.

    NCCL builds one ring per channel and gives each channel a NIC near its GPUs (src/graph/
    search.cc); a group with k members on a node crosses the node boundary on k channels at once,
    so its rings share k NICs and the bus bandwidth is k NICs', capped by NVLink inside the node.
    nccl-tests doc/PERFORMANCE.md: multi-node all_reduce/all_gather busbw on 8-GPU nodes reaches
    about the node's aggregate NIC rate (8 x 400 Gb/s CX-7 on DGX H100: ~350-400 GB/s). The other
    groups of the axis on that node hold the node's other GPUs and NICs (gpus_per_node / k groups
    of k), so they do not share these NICs.
    """
    return min(intra_gbs, nic_gbs * max(1, k))


# Per-peer message size at which an all-to-all reaches half the link rate: each peer is its own
# send/recv with a fixed cost, so small messages under-use the NIC (nccl-tests alltoall_perf and
# sendrecv_perf on 400G IB: half of the peak bus bandwidth near 64 KiB per peer).
A2A_HALF_BANDWIDTH_BYTES = 64 * 2**10


def a2a_peer_efficiency(per_peer_bytes: float) -> float:
    return per_peer_bytes / (per_peer_bytes + A2A_HALF_BANDWIDTH_BYTES)


def _latency_steps(collective: Collective, n: int) -> float:
    """Hop latencies on the critical path, every hop charged at the inter-node latency: ring
    all-gather / reduce-scatter take n - 1 steps (NCCL has no tree for them); all-reduce takes the
    cheaper of a ring's 2(n - 1) and a tree's 2 log2 n. An upper bound on NCCL's own tuning model
    (nccl src/graph/tuning.cc), which charges only nNodes - 1 ring steps (a tree's 2 log2 nNodes)
    at the network latency and the rest at the NVLink latency. The faithful form is not used yet:
    alone it makes the large DeepSpeed 2021 and llm-foundry runs faster still, when they are
    already predicted too fast (validation table 8.0% -> 8.8%), so something else that grows with
    the rank count is missing beside it (README, validation)."""
    match collective:
        case Collective.ALL_GATHER | Collective.REDUCE_SCATTER:
            return float(n - 1)
        case Collective.ALL_REDUCE:
            return min(2.0 * (n - 1), 2.0 * math.log2(n))
        case _:
            return 1.0


def _fabric_s(hw: HardwareProfile, collective: Collective, size_bytes: float, *, span: GroupSpan) -> float:
    """fabric.collective_s with the profile's bus efficiencies (fit bandwidth / nominal link rate)."""
    intra = hw.collective_fit(collective, tier=Tier.INTRA_NODE, num_ranks=max(2, span.ranks_per_domain))
    inter = hw.collective_fit(collective, tier=Tier.INTER_NODE, num_ranks=span.num_ranks)
    return fab.collective_s(collective, size_bytes, levels=span.levels, num_ranks=span.num_ranks,
                            nvlink_fit_gbs=intra.bandwidth_gbs, nic_fit_gbs=inter.bandwidth_gbs,
                            nic_latency_us=inter.latency_us, leaf_latency_us=span.leaf_latency_us,
                            rail_pxn=span.rail_pxn)


def p2p_s(hw: HardwareProfile, size_bytes: float, *, span: GroupSpan) -> float:
    """One point-to-point transfer between neighbours of `span` (pipeline activations)."""
    if size_bytes <= 0:
        return 0.0
    if span.levels:
        return hw.sync_wait_s + _fabric_s(hw, Collective.SEND_RECV, size_bytes, span=span)
    fit = hw.collective_fit(Collective.SEND_RECV, tier=span.tier, num_ranks=2)
    scale = span.nic_scale if span.tier == Tier.INTER_NODE else 1.0
    return hw.sync_wait_s + fit.latency_us * _US + size_bytes / (fit.bandwidth_gbs * scale * _GB)
