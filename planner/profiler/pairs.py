"""`planner profile --links`: every node pair (and rail) of a launch, measured one pair at a time.

Tier fits say how fast a typical group is; a measured pair table says which node pairs are slow
(a bad cable, a RoCE island behind a gateway, a congested leaf), so the planner prices each group
on its own links and the mapping search can avoid them (Holmes, Yang et al. 2023). Each pair
ping-pongs a small and a large message while every other rank waits at a barrier; latency and
bandwidth come from the two one-way times. Multi-node launches measure each node pair once per
rail (the local rank both ends use); a single-node launch treats every rank as its own "node",
which is what this project's CPU machine can exercise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from planner.scenario import LinkSample, LinkTable

KIB = 1024
_WARMUP, _REPEATS = 2, 5
_SEPARABLE = 1.1  # the large message must take 10% longer than the small one to split alpha from beta


@dataclass(frozen=True, slots=True, kw_only=True)
class PairCase:
    nodes: tuple[int, int]
    rail: int | None
    ranks: tuple[int, int]


def pair_cases(*, world_size: int, local_world_size: int) -> list[PairCase]:
    """Node pairs x rails of the launch (ranks as nodes when it is one node)."""
    if world_size == local_world_size:
        return [PairCase(nodes=(a, b), rail=None, ranks=(a, b))
                for a in range(world_size) for b in range(a + 1, world_size)]
    nodes = world_size // local_world_size
    return [PairCase(nodes=(a, b), rail=r, ranks=(a * local_world_size + r, b * local_world_size + r))
            for a in range(nodes) for b in range(a + 1, nodes) for r in range(local_world_size)]


def pair_sizes(*, quick: bool) -> tuple[int, int]:
    """A latency-bound and a bandwidth-bound message."""
    return (16 * KIB, 1 << 20) if quick else (64 * KIB, 16 << 20)


def measure_pairs(cases: list[PairCase], *, sizes: tuple[int, int], device: torch.device) -> list[LinkSample]:
    """All ranks call this; each pair runs alone. Rank 0 returns the table rows, the others []."""
    rank, mine = dist.get_rank(), []
    for case in cases:
        dist.barrier()
        if rank in case.ranks:
            peer = case.ranks[1] if rank == case.ranks[0] else case.ranks[0]
            times = [_one_way_us(size, peer=peer, lead=rank == case.ranks[0], device=device) for size in sizes]
            if rank == case.ranks[0]:
                mine.append(_fit(case, sizes=sizes, times_us=times))
    dist.barrier()
    gathered: list[list[LinkSample]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    return [s for rows in gathered for s in rows] if rank == 0 else []


def _one_way_us(size: int, *, peer: int, lead: bool, device: torch.device) -> float:
    buf = torch.empty(size // 4, dtype=torch.float32, device=device)
    samples = []
    for i in range(_WARMUP + _REPEATS):
        t0 = time.perf_counter()
        if lead:
            dist.send(buf, dst=peer)
            dist.recv(buf, src=peer)
        else:
            dist.recv(buf, src=peer)
            dist.send(buf, dst=peer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= _WARMUP:
            samples.append((time.perf_counter() - t0) / 2 * 1e6)
    return float(np.median(samples))


def _fit(case: PairCase, *, sizes: tuple[int, int], times_us: list[float]) -> LinkSample:
    """Two-point alpha-beta: bandwidth from the size difference, latency the small message's rest.
    When noise hides the difference (the large message no slower than the small one), the large
    message's whole time is charged to bandwidth: slower, never faster, than the link."""
    (s1, s2), (t1, t2) = sizes, times_us
    separable = t2 > _SEPARABLE * t1
    gbs = ((s2 - s1) / (t2 - t1) if separable else s2 / t2) / 1e3  # bytes per us -> GB/s
    latency = max(0.0, t1 - s1 / (gbs * 1e3))
    return LinkSample(nodes=case.nodes, bandwidth_gbs=gbs, latency_us=latency, rail=case.rail)


def link_table(samples: list[LinkSample], *, world_size: int, local_world_size: int) -> LinkTable:
    nodes = world_size if world_size == local_world_size else world_size // local_world_size
    return LinkTable(num_nodes=nodes, pairs=sorted(samples, key=lambda s: (s.nodes, s.rail or 0)))
