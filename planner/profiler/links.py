"""Times collectives over torch.distributed (NCCL on GPUs, gloo on CPU) and fits alpha-beta.

Runs inside every rank of an initialised default process group. Groups are formed per network
tier: intra-node groups of 2, 4, ... ranks (all groups of one size run at once, as the TP or DP
groups of a real job do) and, under a multi-node torchrun, inter-node groups of the ranks that
share a local rank. Sizes follow the nccl-tests convention: `size_bytes` is the whole buffer
(all-reduce in/out, all-gather output, reduce-scatter input, all-to-all per-rank buffer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from planner.hardware import Collective, Tier

KIB = 1024
_HUBER_K = 1.345  # Huber tuning constant (95% efficiency under Gaussian noise)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSweep:
    sizes_bytes: tuple[int, ...]
    warmup: int
    repeats: int  # timed samples per size (fewer for the big sizes, see repeats_for)
    big_bytes: int  # sizes at or above this get 2 samples and 1 warm-up, so CPU runs stay short


def default_link_sweep(*, cuda: bool, quick: bool) -> LinkSweep:
    """1 KiB .. 256 MiB by powers of 4 (1 GiB on GPU); --quick stops at 256 KiB."""
    top = 256 * KIB if quick else (1 << 30 if cuda else 256 << 20)
    sizes = tuple(KIB * 4**i for i in range(16) if KIB * 4**i <= top)
    return LinkSweep(sizes_bytes=sizes, warmup=2 if cuda else 1, repeats=3 if quick else (10 if cuda else 5),
                     big_bytes=(1 << 30) if cuda else (16 << 20))


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkResult:
    collective: Collective
    tier: Tier
    num_ranks: int
    size_bytes: int
    median_us: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TierGroups:
    tier: Tier
    num_ranks: int
    groups: list[list[int]]


def tier_groups(*, world_size: int, local_world_size: int) -> list[TierGroups]:
    """Intra-node groups of 2, 4, ... up to a node; inter-node groups across nodes (same local rank)."""
    assert world_size % local_world_size == 0, "every node must run the same number of ranks"
    num_nodes = world_size // local_world_size
    out = []
    k = 2
    while k <= local_world_size:
        groups = [list(range(start, start + k)) for start in range(0, world_size - k + 1, k)
                  if start // local_world_size == (start + k - 1) // local_world_size]
        out.append(TierGroups(tier=Tier.INTRA_NODE, num_ranks=k, groups=groups))
        k *= 2
    if num_nodes > 1:
        groups = [[node * local_world_size + lr for node in range(num_nodes)] for lr in range(local_world_size)]
        out.append(TierGroups(tier=Tier.INTER_NODE, num_ranks=num_nodes, groups=groups))
    return out


def _op(collective: Collective, size_bytes: int, *, members: list[int], device: torch.device,
        group: dist.ProcessGroup) -> Callable[[], None]:
    """The collective on float32 buffers of `size_bytes` (rounded up to whole elements per rank)."""
    n = len(members)
    numel = max(n, math.ceil(size_bytes / 4 / n) * n)
    buf = torch.ones(numel, device=device)
    out = torch.empty_like(buf)
    shard = torch.ones(numel // n, device=device)
    match collective:
        case Collective.ALL_REDUCE:
            return lambda: dist.all_reduce(buf, group=group)
        case Collective.ALL_GATHER:
            return lambda: dist.all_gather_single(out, shard, group=group)
        case Collective.REDUCE_SCATTER:
            return lambda: dist.reduce_scatter_single(shard, buf, group=group)
        case Collective.ALL_TO_ALL:
            return lambda: dist.all_to_all_single(out, buf, group=group)
        case Collective.SEND_RECV:
            return _ping_pong(buf, members=members, group=group)


def _ping_pong(buf: torch.Tensor, *, members: list[int], group: dist.ProcessGroup) -> Callable[[], None]:
    """Neighbour pairs (0,1), (2,3), ... bounce one message; the timer halves the round trip."""
    me = members.index(dist.get_rank())
    peer = members[me ^ 1] if (me ^ 1) < len(members) else None

    def call() -> None:
        if peer is None:
            return
        if me % 2 == 0:
            dist.send(buf, dst=peer, group=group)
            dist.recv(buf, src=peer, group=group)
        else:
            dist.recv(buf, src=peer, group=group)
            dist.send(buf, dst=peer, group=group)

    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_collective(fn: Callable[[], None], *, device: torch.device, warmup: int, repeats: int,
                    inner: int, group: dist.ProcessGroup) -> float:
    """Median over repeats of the slowest rank's per-call time (us); a barrier starts each sample."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = torch.zeros(repeats, dtype=torch.float64)
    for r in range(repeats):
        dist.barrier(group=group)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples[r] = (time.perf_counter() - t0) / inner * 1e6
    slowest = samples.to(device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
    return float(np.median(slowest.cpu().numpy()))


def link_cases(sweep: LinkSweep) -> list[tuple[Collective, int]]:
    return [(c, s) for c in Collective for s in sweep.sizes_bytes]


def measure_tier(tg: TierGroups, *, sweep: LinkSweep, device: torch.device,
                 tick: Callable[[str], None]) -> list[LinkResult]:
    """Every collective and size on this rank's group of the tier (all ranks call it; idle ranks
    of a tier that does not divide the node only tick)."""
    group, members = _my_group(tg)
    results = []
    for collective, size in link_cases(sweep):
        tick(f"{tg.tier.value} x{tg.num_ranks} {collective.value} {_human(size)}")
        if group is None:
            continue
        fn = _op(collective, size, members=members, device=device, group=group)
        big = size >= sweep.big_bytes
        inner = 1 if big else max(1, min(20, (256 * KIB) // size))
        median_us = time_collective(fn, device=device, warmup=1 if big else sweep.warmup,
                                    repeats=min(2, sweep.repeats) if big else sweep.repeats,
                                    inner=inner, group=group)
        if collective == Collective.SEND_RECV:
            median_us /= 2.0  # one round trip = two one-way transfers
        results.append(LinkResult(collective=collective, tier=tg.tier, num_ranks=tg.num_ranks,
                                  size_bytes=size, median_us=median_us))
    dist.barrier()
    return results


def _my_group(tg: TierGroups) -> tuple[dist.ProcessGroup | None, list[int]]:
    """Create every group of the tier (all ranks must), return this rank's (or None if idle)."""
    rank = dist.get_rank()
    mine: tuple[dist.ProcessGroup | None, list[int]] = (None, [])
    for members in tg.groups:
        pg = dist.group.WORLD if len(members) == dist.get_world_size() else dist.new_group(members)
        if rank in members:
            mine = (pg, members)
    return mine


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


# -- alpha-beta fit ---------------------------------------------------------------------------


def fit_alpha_beta(traffic_bytes: list[float], times_us: list[float]) -> tuple[float, float]:
    """(latency_us, bandwidth_gbs) for t = alpha + bytes / beta, robust and scale-aware.

    Least squares on *relative* residuals (each row divided by its time, so 1 KiB and 256 MiB
    points weigh alike), reweighted with Huber weights (iteratively reweighted least squares)
    so a few noisy samples on a shared machine do not drag the fit. alpha >= 0 and beta > 0.
    """
    x = np.asarray(traffic_bytes, dtype=float)
    t = np.asarray(times_us, dtype=float)
    assert len(x) == len(t) >= 2 and (t > 0).all()
    w = np.ones_like(t)
    coef = np.zeros(2)
    for _ in range(10):
        a = np.stack([np.ones_like(x), x], axis=1) * (w / t)[:, None]
        coef, *_ = np.linalg.lstsq(a, w, rcond=None)
        coef = _non_negative(coef, x=x, t=t, w=w)
        rel = (coef[0] + coef[1] * x - t) / t
        scale = max(1.4826 * float(np.median(np.abs(rel - np.median(rel)))), 1e-6)
        w = np.minimum(1.0, _HUBER_K * scale / np.maximum(np.abs(rel), 1e-12))
    alpha_us, us_per_byte = float(coef[0]), float(coef[1])
    return alpha_us, 1e-3 / us_per_byte  # bytes/us = MB/s -> GB/s


def _non_negative(coef: np.ndarray, *, x: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Refit one parameter when the other went negative (a pure-latency or pure-bandwidth fit)."""
    alpha, slope = coef
    if alpha < 0:
        alpha = 0.0
        slope = float(np.sum(w**2 * x / t) / np.sum(w**2 * (x / t) ** 2))
    if slope <= 0:
        # No size effect visible (small sizes only, or noise): charge half the largest message's
        # time to bandwidth, a conservative bound instead of an infinite bandwidth.
        slope = 0.5 * float(t[np.argmax(x)] / x.max())
    return np.array([alpha, slope])
