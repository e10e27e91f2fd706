"""Context parallelism on any backend: zigzag ring attention (send/recv of KV blocks, online softmax).

Each of the cp ranks holds two of the 2*cp sequence chunks, i and 2*cp-1-i, so every rank does
the same causal work (the load-balanced layout of Striped/zigzag ring attention; Brandon et al.
2023, Liu et al. 2023 "Ring Attention"). KV blocks travel around the ring while each rank merges
block results with the log-sum-exp rule (Milakov & Gimelshein 2018, FlashAttention); the
backward pass sends the KV blocks round again together with their gradient accumulators, which
arrive back at their owner after cp hops.
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch
import torch.distributed as dist
from torch import nn


class BlockMask(IntEnum):
    SKIP = 0
    CAUSAL = 1
    FULL = 2


def zigzag_chunks(rank: int, *, cp: int) -> tuple[int, int]:
    """The two sequence chunks (of 2*cp) that cp rank `rank` holds."""
    return rank, 2 * cp - 1 - rank


def zigzag_positions(seq_len: int, *, rank: int, cp: int) -> torch.Tensor:
    """Token positions held by `rank`, in local order (chunk i then chunk 2cp-1-i)."""
    assert seq_len % (2 * cp) == 0, "seq_len must divide into 2*cp chunks"
    size = seq_len // (2 * cp)
    return torch.cat([torch.arange(c * size, (c + 1) * size) for c in zigzag_chunks(rank, cp=cp)])


def _mask(q_chunk: int, k_chunk: int) -> BlockMask:
    if k_chunk < q_chunk:
        return BlockMask.FULL
    return BlockMask.CAUSAL if k_chunk == q_chunk else BlockMask.SKIP


def _scores(q: torch.Tensor, k: torch.Tensor, *, mask: BlockMask, scale: float) -> torch.Tensor:
    """q [B,H,Sq,D] x k [B,H,Sk,D] -> scaled scores [B,H,Sq,Sk], -inf above the diagonal if causal."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask == BlockMask.CAUSAL:
        upper = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(upper, float("-inf"))
    return s


def _attend(q, k, v, *, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: (out [B,H,Sq,Dv], lse [B,H,Sq])."""
    s = _scores(q, k, mask=mask, scale=scale)
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v), lse


def _merge(acc: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor, lse: torch.Tensor):
    """Online softmax: combine two partial attentions over disjoint key sets."""
    if acc is None:
        return out, lse
    acc_out, acc_lse = acc
    new_lse = torch.logaddexp(acc_lse, lse)
    merged = acc_out * torch.exp(acc_lse - new_lse).unsqueeze(-1) + out * torch.exp(lse - new_lse).unsqueeze(-1)
    return merged, new_lse


def _attend_grad(q, k, v, dout, lse, delta, *, mask: BlockMask, scale: float):
    """Gradients of one block given the final lse and delta = rowsum(dout * out) (FlashAttention-2 bwd)."""
    p = torch.exp(_scores(q, k, mask=mask, scale=scale) - lse.unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), dout)
    ds = p * (torch.matmul(dout, v.transpose(-1, -2)) - delta.unsqueeze(-1))
    return torch.matmul(ds, k) * scale, torch.matmul(ds.transpose(-1, -2), q) * scale, dv


def _shift(tensor: torch.Tensor, group: dist.ProcessGroup) -> tuple[list, torch.Tensor]:
    """Start sending `tensor` to the next ring rank and receiving the previous rank's; returns (reqs, buffer)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    recv = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor, group=group, group_peer=(rank + 1) % size),
           dist.P2POp(dist.irecv, recv, group=group, group_peer=(rank - 1) % size)]
    return dist.batch_isend_irecv(ops), recv


def _pack(*tensors: torch.Tensor) -> torch.Tensor:
    """One flat message per hop (two transfers of equal shape can pair up wrongly; PLATFORM.md)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _unpack(flat: torch.Tensor, like: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    parts = torch.split(flat, [t.numel() for t in like])
    return [p.view_as(t) for p, t in zip(parts, like)]


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.chunk(2, dim=-2)


def _finish_forward(ctx, acc, q, k, v, *, group: dist.ProcessGroup, scale: float) -> torch.Tensor:
    """Join the two zigzag chunks' merged (output, log-sum-exp) and keep what the backward reads."""
    out = torch.cat([acc[0][0], acc[1][0]], dim=-2)
    lse = torch.cat([acc[0][1], acc[1][1]], dim=-1)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.group, ctx.scale = group, scale
    return out


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, scale):
        rank, cp = dist.get_rank(group), dist.get_world_size(group)
        q_parts, q_chunks = _halves(q), zigzag_chunks(rank, cp=cp)
        acc = [None, None]
        kv = _pack(k, v)
        for step in range(cp):
            pending = _shift(kv, group) if step < cp - 1 else None
            k_blk, v_blk = _unpack(kv, (k, v))
            src_chunks = zigzag_chunks((rank - step) % cp, cp=cp)
            for i in range(2):
                for k_part, v_part, k_chunk in zip(_halves(k_blk), _halves(v_blk), src_chunks):
                    mask = _mask(q_chunks[i], k_chunk)
                    if mask != BlockMask.SKIP:
                        acc[i] = _merge(acc[i], *_attend(q_parts[i], k_part, v_part, mask=mask, scale=scale))
            if pending is not None:
                for req in pending[0]:
                    req.wait()
                kv = pending[1]
        return _finish_forward(ctx, acc, q, k, v, group=group, scale=scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        rank, cp = dist.get_rank(group), dist.get_world_size(group)
        delta = (dout * out).sum(dim=-1)
        dq = torch.zeros_like(q)
        msg = _pack(k, v, torch.zeros_like(k), torch.zeros_like(v))
        q_chunks = zigzag_chunks(rank, cp=cp)
        for step in range(cp):
            k_blk, v_blk, dk_blk, dv_blk = _unpack(msg, (k, v, k, v))
            src_chunks = zigzag_chunks((rank - step) % cp, cp=cp)
            for i, (q_i, do_i, lse_i, dl_i, dq_i) in enumerate(
                    zip(_halves(q), _halves(dout), lse.chunk(2, -1), delta.chunk(2, -1), _halves(dq))):
                for j, k_chunk in enumerate(src_chunks):
                    mask = _mask(q_chunks[i], k_chunk)
                    if mask == BlockMask.SKIP:
                        continue
                    g_q, g_k, g_v = _attend_grad(q_i, _halves(k_blk)[j], _halves(v_blk)[j], do_i, lse_i, dl_i,
                                                 mask=mask, scale=scale)
                    dq_i.add_(g_q)
                    _halves(dk_blk)[j].add_(g_k)
                    _halves(dv_blk)[j].add_(g_v)
            reqs, msg = _shift(msg, group)  # after cp hops each accumulator is back at its owner
            for req in reqs:
                req.wait()
        _, _, dk, dv = _unpack(msg, (k, v, k, v))
        return dq, dk, dv, None, None


class RingAttention(nn.Module):
    """Drop-in causal attention core over a cp process group; q,k,v [B, heads, S_local, D]."""

    def __init__(self, group: dist.ProcessGroup, *, scale: float | None = None) -> None:
        super().__init__()
        self.group = group
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[1] != q.shape[1]:  # GQA/MQA: autograd sums the gradients of the repeated heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return _RingAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), self.group, scale)


def _shift_both(fwd: torch.Tensor, bwd: torch.Tensor,
                group: dist.ProcessGroup) -> tuple[list, torch.Tensor, torch.Tensor]:
    """`fwd` to the next ring rank and `bwd` to the previous one at once (both link directions);
    distinct tags keep the two apart when cp = 2 makes both peers the same rank."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    got_fwd, got_bwd = torch.empty_like(fwd), torch.empty_like(bwd)
    ops = [dist.P2POp(dist.isend, fwd, group=group, group_peer=nxt, tag=0),
           dist.P2POp(dist.isend, bwd, group=group, group_peer=prv, tag=1),
           dist.P2POp(dist.irecv, got_fwd, group=group, group_peer=prv, tag=0),
           dist.P2POp(dist.irecv, got_bwd, group=group, group_peer=nxt, tag=1)]
    return dist.batch_isend_irecv(ops), got_fwd, got_bwd


def _bidirectional_sources(rank: int, step: int, cp: int) -> tuple[int, int]:
    """The chunks in hand at `step`: the first chunk of rank-step (travelling forward) and the
    second chunk of rank+step (travelling backward)."""
    return zigzag_chunks((rank - step) % cp, cp=cp)[0], zigzag_chunks((rank + step) % cp, cp=cp)[1]


class _BidirectionalRingAttention(torch.autograd.Function):
    """Zigzag ring attention with each rank's two chunks travelling opposite ways: per step every
    link carries half the K,V in each direction (cost/context.py's ring-bidirectional)."""

    @staticmethod
    def forward(ctx, q, k, v, group, scale):
        rank, cp = dist.get_rank(group), dist.get_world_size(group)
        q_parts, q_chunks = _halves(q), zigzag_chunks(rank, cp=cp)
        (k0, k1), (v0, v1) = _halves(k), _halves(v)
        fwd_msg, bwd_msg = _pack(k0, v0), _pack(k1, v1)
        acc = [None, None]
        for step in range(cp):
            pending = _shift_both(fwd_msg, bwd_msg, group) if step < cp - 1 else None
            blocks = [_unpack(fwd_msg, (k0, v0)), _unpack(bwd_msg, (k1, v1))]
            for (k_blk, v_blk), k_chunk in zip(blocks, _bidirectional_sources(rank, step, cp)):
                for i in range(2):
                    mask = _mask(q_chunks[i], k_chunk)
                    if mask != BlockMask.SKIP:
                        acc[i] = _merge(acc[i], *_attend(q_parts[i], k_blk, v_blk, mask=mask, scale=scale))
            if pending is not None:
                for req in pending[0]:
                    req.wait()
                fwd_msg, bwd_msg = pending[1], pending[2]
        return _finish_forward(ctx, acc, q, k, v, group=group, scale=scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        rank, cp = dist.get_rank(group), dist.get_world_size(group)
        delta = (dout * out).sum(dim=-1)
        dq = torch.zeros_like(q)
        (k0, k1), (v0, v1) = _halves(k), _halves(v)
        like = (k0, v0, k0, v0)
        msgs = [_pack(k0, v0, torch.zeros_like(k0), torch.zeros_like(v0)),
                _pack(k1, v1, torch.zeros_like(k1), torch.zeros_like(v1))]
        q_chunks = zigzag_chunks(rank, cp=cp)
        for step in range(cp):
            for msg, k_chunk in zip(msgs, _bidirectional_sources(rank, step, cp)):
                k_blk, v_blk, dk_blk, dv_blk = _unpack(msg, like)
                for i, (q_i, do_i, lse_i, dl_i, dq_i) in enumerate(
                        zip(_halves(q), _halves(dout), lse.chunk(2, -1), delta.chunk(2, -1), _halves(dq))):
                    mask = _mask(q_chunks[i], k_chunk)
                    if mask == BlockMask.SKIP:
                        continue
                    g_q, g_k, g_v = _attend_grad(q_i, k_blk, v_blk, do_i, lse_i, dl_i, mask=mask, scale=scale)
                    dq_i.add_(g_q)
                    dk_blk.add_(g_k)
                    dv_blk.add_(g_v)
            reqs, fwd_msg, bwd_msg = _shift_both(msgs[0], msgs[1], group)  # cp hops bring each home
            for req in reqs:
                req.wait()
            msgs = [fwd_msg, bwd_msg]
        _, _, dk0, dv0 = _unpack(msgs[0], like)
        _, _, dk1, dv1 = _unpack(msgs[1], like)
        return dq, torch.cat([dk0, dk1], dim=-2), torch.cat([dv0, dv1], dim=-2), None, None


class BidirectionalRingAttention(RingAttention):
    """RingAttention whose two zigzag chunks travel opposite ways round the ring."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return _BidirectionalRingAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), self.group, scale)
