"""Collectives on a hierarchical fabric (NVLink domain, leaf, spine, core), priced tier by tier.

A group's members fall into nested domains (ClusterSpec.fabric tiers). NCCL-style hierarchical
algorithms run one level per tier the group spans: reduce-scatter inside each NVLink domain, then
across the domains of the next tier on 1/k of the buffer (every rank of a domain drives its own
rail), and so on up; all-reduce is reduce-scatter up and all-gather back down (NCCL's ring/tree
across nodes with intra-node reduce-scatter/all-gather; Jeaugey, "Massively Scale Your Deep
Learning Training with NCCL 2.4", NVIDIA blog 2019; Sergeev & Del Balso 2018 hierarchical
all-reduce). All-to-all sends each destination's share directly, so the bytes that leave a tier
cross that tier's uplinks concurrently and the slowest tier sets the time; on a rail-optimised
fabric NCCL's PXN first forwards off-node bytes over NVLink to the GPU on the destination's
rail (NCCL 2.12 release notes, "PXN"), which adds that share to the NVLink traffic.

Congestion (C4, Dong et al. 2024, arXiv 2406.04594): the job's own concurrent groups of one axis
share a domain's uplinks. `senders` GPUs of a domain push traffic up through
size / oversubscription uplinks; with adaptive routing they share them evenly, with static ECMP
hashing the busiest uplink carries the expected maximum of a balls-into-bins draw (Raab and
Steger 1998: m balls in n bins, max ~ m/n + sqrt(2 (m/n) ln n)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.hardware.profile import Collective
from planner.scenario import FabricSpec, LoadBalancing, TierKind

_US = 1e-6
_GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class TierLevel:
    """One level of a hierarchical collective.

    `fan_in` sub-domains (each holding `shard` members of the group) are joined at `tier`; each
    rank moves 1/shard of the buffer at `bandwidth_gbs` (after oversubscription and congestion).
    `reach` is the members inside one domain of this tier (shard * fan_in).
    """

    tier: TierKind
    fan_in: int
    shard: int
    bandwidth_gbs: float
    latency_us: float
    rate_scale: float  # bandwidth_gbs over the nominal link the profile's fit was measured on


    @property
    def reach(self) -> int:
        return self.shard * self.fan_in


def uplink_load(*, senders: int, domain_gpus: int, oversubscription: float, balancing: LoadBalancing) -> float:
    """Flows per uplink on the busiest uplink of a domain (>= 1): what one flow's bandwidth is divided by.

    Uplinks are counted in per-GPU link units: a domain of D GPUs has D / oversubscription of them.
    """
    if senders <= 0:
        return 1.0
    uplinks = max(1.0, domain_gpus / oversubscription)
    mean = senders / uplinks
    match balancing:
        case LoadBalancing.ADAPTIVE:
            return max(1.0, mean)
        case LoadBalancing.ECMP:
            if uplinks <= 1:
                return max(1.0, mean)
            return max(1.0, min(float(senders), mean + math.sqrt(2.0 * mean * math.log(uplinks))))


def build_levels(fabric: FabricSpec, *, reach: list[int], senders: list[int], nic_scale: float,
                 nominal_gbs: tuple[float, float]) -> tuple[TierLevel, ...]:
    """Levels of one group from its members per domain of each tier (`reach[t]`, the last = all members).

    `senders[t]` (t >= 1): the busiest tier-(t-1) domain's GPUs whose groups leave it (uplinks into
    tier t). A level at tier t runs at the slowest of the tiers 1..t its traffic climbs through.
    `nic_scale` scales the NIC tiers for a group that touches slower NICs (overrides, link table).
    `nominal_gbs`: the (intra-node, inter-node) link rates the profile's collective fits stand for.
    """
    tiers = fabric.tiers
    levels, below, ceiling = [], 1, math.inf
    for t, tier in enumerate(tiers):
        if t >= 1:  # NIC -> leaf is one dedicated link per GPU; hashing starts above the leaf
            balancing = fabric.load_balancing if t >= 2 else LoadBalancing.ADAPTIVE
            load = uplink_load(senders=senders[t], domain_gpus=tiers[t - 1].size_gpus,
                               oversubscription=tier.oversubscription, balancing=balancing)
            ceiling = min(ceiling, tier.bandwidth_gbs / load * nic_scale)
        k = reach[t] if t < len(reach) else reach[-1]
        fan = max(1, k // below)
        if fan > 1:
            gbs = tier.bandwidth_gbs if t == 0 else ceiling
            levels.append(TierLevel(tier=tier.kind, fan_in=fan, shard=below, bandwidth_gbs=gbs,
                                    latency_us=tier.latency_us, rate_scale=gbs / nominal_gbs[min(t, 1)]))
        below = max(below, k)
    return tuple(levels)


def collective_s(collective: Collective, size_bytes: float, *, levels: tuple[TierLevel, ...], num_ranks: int,
                 nvlink_fit_gbs: float, nic_fit_gbs: float, nic_latency_us: float, leaf_latency_us: float,
                 rail_pxn: bool) -> float:
    """Seconds of one collective over `size_bytes` on these levels.

    nvlink_fit_gbs / nic_fit_gbs: the profile's bus bandwidth on the nominal links (so measured
    efficiency carries over), scaled per level by rate_scale; nic_latency_us: the profile's
    inter-node latency, standing for the leaf tier (higher tiers add their difference to it).
    """
    if not levels or size_bytes <= 0 or num_ranks <= 1:
        return 0.0

    def bw(level: TierLevel) -> float:
        return level.rate_scale * _GB * (nvlink_fit_gbs if level.tier == TierKind.NVLINK else nic_fit_gbs)

    def lat(level: TierLevel) -> float:
        if level.tier == TierKind.NVLINK:
            return level.latency_us * _US
        return (nic_latency_us + level.latency_us - leaf_latency_us) * _US

    match collective:
        case Collective.ALL_REDUCE | Collective.REDUCE_SCATTER | Collective.ALL_GATHER:
            phases = 2 if collective == Collective.ALL_REDUCE else 1
            t = sum((lv.fan_in - 1) / lv.fan_in * size_bytes / lv.shard / bw(lv) for lv in levels)
            hops = sum(lat(lv) * math.ceil(math.log2(lv.fan_in)) for lv in levels)
            return phases * (t + hops)
        case Collective.ALL_TO_ALL:
            n = num_ranks
            worst = 0.0
            for lv in levels:  # bytes leaving a sub-domain of this level cross its links
                leaving = size_bytes * (n - lv.shard) / n if lv.tier != TierKind.NVLINK else \
                    size_bytes * (lv.reach - 1) / n
                if lv.tier == TierKind.NVLINK and rail_pxn:
                    leaving += size_bytes * (n - lv.reach) / n  # PXN: off-node bytes hop over NVLink first
                worst = max(worst, leaving / bw(lv))
            return lat(levels[-1]) + worst
        case Collective.SEND_RECV:  # between two ranks: the outermost tier crossed
            top = levels[-1]
            return lat(top) + size_bytes / bw(top)
