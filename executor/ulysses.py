"""Context parallelism by all-to-all (DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv 2309.14509).

Each CP rank holds a contiguous 1/cp of the sequence. Before attention one all-to-all trades
sequence for heads: every rank then holds the whole sequence for heads/cp of the heads and runs
plain causal attention; a second all-to-all trades them back. q, k and v go in ONE all-to-all
(stacked per destination rank): two autograd collectives of equal shape in one backward can pair
up wrongly on gloo (PLATFORM.md). K,V heads that do not divide by cp are repeated to the q heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from executor.ring_attention import BidirectionalRingAttention, RingAttention, zigzag_positions
from planner.graph import expand_kv
from planner.plan import CpKind


def _all_to_all(send: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """send [cp, ...] (slice j to rank j) -> recv [cp, ...] (slice i from rank i)."""
    send = send.contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def _seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, H, S/cp, D] -> [B, H/cp, S, D] (sequence in rank order)."""
    cp = dist.get_world_size(group)
    b, h, s, d = x.shape
    recv = _all_to_all(x.reshape(b, cp, h // cp, s, d).transpose(0, 1), group)  # [cp(src), B, H/cp, S/cp, D]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // cp, cp * s, d)


def _heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, H/cp, S, D] -> [B, H, S/cp, D]: the inverse of _seq_to_heads."""
    cp = dist.get_world_size(group)
    b, h, s, d = x.shape
    recv = _all_to_all(x.reshape(b, h, cp, s // cp, d).permute(2, 0, 1, 3, 4), group)  # [cp(src), B, H/cp, S/cp, D]
    return recv.transpose(0, 1).reshape(b, cp * h, s // cp, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad.contiguous(), ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad.contiguous(), ctx.group), None


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class UlyssesAttention(nn.Module):
    """Drop-in causal attention core over a cp group; q [B, H, S/cp, D], k, v [B, Hkv, S/cp, D].

    `inner` attends the gathered sequence: causal SDPA, or (hybrid CP) ring attention over the
    ranks that hold the other parts of the sequence.
    """

    def __init__(self, group: dist.ProcessGroup, *, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.group = group
        self.inner = inner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cp = dist.get_world_size(self.group)
        if k.shape[1] % cp:
            k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        b, h, s, d = q.shape
        hkv = k.shape[1]
        # per destination rank: its q heads, then its k heads, then its v heads
        stacked = torch.cat([t.reshape(b, cp, -1, s, d) for t in (q, k, v)], dim=2).reshape(b, -1, s, d)
        q_h, k_h, v_h = _SeqToHeads.apply(stacked, self.group).split([h // cp, hkv // cp, hkv // cp], dim=1)
        out = (self.inner or _causal_sdpa)(q_h, k_h, v_h)
        return _HeadsToSeq.apply(out.contiguous(), self.group)


def cp_positions(kind: CpKind, seq_len: int, *, rank: int, cp: int, a2a: int = 1) -> torch.Tensor:
    """Token positions a CP rank holds: a contiguous 1/cp for Ulysses, two zigzag chunks for rings;
    hybrid: ring rank rank // a2a's zigzag chunks, split contiguously over its a2a Ulysses ranks (the
    all-to-all gathers them back in the ring's order)."""
    match kind:
        case CpKind.ALL_TO_ALL:
            size = seq_len // cp
            return torch.arange(rank * size, (rank + 1) * size)
        case CpKind.RING | CpKind.RING_BIDIRECTIONAL:
            return zigzag_positions(seq_len, rank=rank, cp=cp)
        case CpKind.HYBRID:
            ring = zigzag_positions(seq_len, rank=rank // a2a, cp=cp // a2a)
            return ring.chunk(a2a)[rank % a2a]


@dataclass(frozen=True, slots=True)
class HybridGroups:
    """This rank's all-to-all group (a2a consecutive CP ranks) and ring group (every a2a-th)."""

    a2a: dist.ProcessGroup
    ring: dist.ProcessGroup


def hybrid_groups(cp_groups: list[list[int]], *, a2a: int) -> HybridGroups:
    """Collective: every rank creates every group, in the same order. `cp_groups` lists each CP
    group's global ranks in CP order."""
    me, inner, outer = dist.get_rank(), None, None
    for ranks in cp_groups:
        for j in range(0, len(ranks), a2a):
            g = dist.new_group(ranks[j:j + a2a])
            inner = g if me in ranks[j:j + a2a] else inner
        for i in range(a2a):
            g = dist.new_group(ranks[i::a2a])
            outer = g if me in ranks[i::a2a] else outer
    return HybridGroups(a2a=inner, ring=outer)


def cp_core(kind: CpKind, group: dist.ProcessGroup, *, hybrid: HybridGroups | None = None) -> nn.Module:
    match kind:
        case CpKind.ALL_TO_ALL:
            return UlyssesAttention(group)
        case CpKind.RING_BIDIRECTIONAL:
            return BidirectionalRingAttention(group)
        case CpKind.RING:
            return RingAttention(group)
        case CpKind.HYBRID:
            return UlyssesAttention(hybrid.a2a, inner=RingAttention(hybrid.ring))
