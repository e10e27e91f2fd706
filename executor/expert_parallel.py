"""Parallel MoE layers: expert (EP) and expert-tensor (ETP) parallelism under attention TP, folded.

With MoE parallel folding (Liu et al. 2025) the expert layer re-splits the GPUs of a pipeline
stage as edp x ep x etp, independent of the attention's dp x cp x tp. Every attention-TP peer
holds the same tokens, so the routed slots are split evenly over the tp group (each slot is
computed once) and the unweighted expert outputs are gathered back before the combine: router,
shared experts and the input then see full gradients on every TP rank, as in a dense block.
Slots travel to their expert's EP rank by all_to_all_single (GShard, Lepikhin et al. 2020); with
etp > 1 each expert's w1/w3 are column- and w2 row-sharded over the etp group (Megatron's
expert TP): the etp peers swap their received tokens, each computes a partial output with its
shard, and the partials return to the token's owner and are summed. Placement comes from the
plan (per MoE layer, the EP rank of every expert), so an ILP placement runs as planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed._functional_collectives import all_to_all_single_autograd

from executor.token_split import gather_rows, split_bounds, split_rows
from planner.plan import Plan
from planner.scenario import ModelSpec
from planner.graph import MoE

EXPERT_PARAMS = ("w1", "w2", "w3")
# stacked expert weights [E, out, in]: the dim etp shards (w1/w3 column-parallel, w2 row-parallel)
ETP_SHARD_DIM = {"w1": 1, "w3": 1, "w2": 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class MoEGroups:
    """The groups one MoE layer talks to; a group of one rank is None (nothing to exchange)."""

    ep: dist.ProcessGroup | None
    etp: dist.ProcessGroup | None
    tp: dist.ProcessGroup | None
    send_order: list[int]  # experts sorted by (owner EP rank, row on the owner)


def layer_placement(plan: Plan, spec: ModelSpec, *, moe_ordinal: int) -> list[int]:
    """EP rank of every expert for the moe_ordinal-th MoE layer (contiguous blocks by default)."""
    if plan.expert_placement is not None:
        return list(plan.expert_placement[moe_ordinal])
    per_rank = spec.num_local_experts // plan.dims.ep
    return [e // per_rank for e in range(spec.num_local_experts)]


def local_experts(placement: list[int], *, ep_rank: int) -> list[int]:
    """Global ids of the experts on ep_rank, in the order their rows are stored."""
    return [e for e, r in enumerate(placement) if r == ep_rank]


def _group(group: dist.ProcessGroup) -> dist.ProcessGroup | None:
    return group if dist.get_world_size(group) > 1 else None


def shard_experts(moe: MoE, *, placement: list[int], ep_rank: int, ep: dist.ProcessGroup,
                  etp_mesh: DeviceMesh, tp: dist.ProcessGroup) -> None:
    """Keep ep_rank's experts (their etp shard) and route this layer's slots through the groups."""
    owned = local_experts(placement, ep_rank=ep_rank)
    etp = etp_mesh.get_group()
    etp_size, etp_rank = dist.get_world_size(etp), dist.get_rank(etp)
    for name in EXPERT_PARAMS:
        full = getattr(moe.experts, name)
        if full is not None:
            rows = full.detach()[owned]
            shard = rows.chunk(etp_size, dim=ETP_SHARD_DIM[name])[etp_rank]
            setattr(moe.experts, name, nn.Parameter(shard.clone()))
    moe.experts.global_ids = owned
    moe.experts.etp_mesh = etp_mesh if etp_size > 1 else None  # checkpoints save etp shards as DTensors
    send_order = sorted(range(len(placement)), key=lambda e: (placement[e], owned_row(placement, e)))
    groups = MoEGroups(ep=_group(ep), etp=_group(etp), tp=_group(tp), send_order=send_order)
    moe.forward = partial(_parallel_forward, moe, groups=groups)


def owned_row(placement: list[int], expert: int) -> int:
    return sum(1 for e in range(expert) if placement[e] == placement[expert])


def _exchange_counts(counts: torch.Tensor, *, group: dist.ProcessGroup) -> torch.Tensor:
    """counts [n, E_local] tokens this rank sends to each peer's experts -> received [n, E_local]."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received.view(-1), counts.reshape(-1).contiguous(), group=group)
    return received


def _expert_major(counts: torch.Tensor) -> torch.Tensor:
    """Permutation taking rows grouped (source peer, local expert) to expert-major order."""
    local_expert = torch.arange(counts.shape[1], device=counts.device).repeat(counts.shape[0])
    return local_expert.repeat_interleave(counts.reshape(-1)).argsort(stable=True)


def _etp_compute(moe: MoE, x: torch.Tensor, counts: list[int], *, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Expert outputs for x [n, h] (expert-major, counts per local expert), etp-sharded weights.

    Each etp peer sends its tokens to all peers (an all-gather as an uneven all-to-all, so it is
    autograd-aware), computes partial outputs of everyone's tokens with its weight shard, and the
    partials go back to their owners (the reduce-scatter) where they are summed.
    """
    if group is None:
        return moe.experts(x, counts)
    etp = dist.get_world_size(group)
    mine = torch.tensor(counts, device=x.device)
    peers = torch.empty(etp * len(counts), dtype=mine.dtype, device=x.device)
    dist.all_gather_into_tensor(peers, mine, group=group)
    peers = peers.view(etp, -1)
    n, sizes = x.shape[0], peers.sum(1).tolist()
    gathered = all_to_all_single_autograd(x.repeat(etp, 1), sizes, [n] * etp, group)
    by_expert = _expert_major(peers)
    partial_out = moe.experts(gathered[by_expert], peers.sum(0).tolist())[by_expert.argsort()]
    returned = all_to_all_single_autograd(partial_out, [n] * etp, sizes, group)
    # explicit width: an EP rank can receive no tokens at all (n = 0), and view(etp, 0, -1) is ambiguous
    return returned.view(etp, n, partial_out.shape[-1]).sum(0)


def _dispatch_compute_combine(moe: MoE, slots: torch.Tensor, expert_of_slot: torch.Tensor, *,
                              groups: MoEGroups) -> torch.Tensor:
    """Unweighted expert outputs for slots (grouped by expert id), computed on the experts' EP ranks."""
    counts = torch.bincount(expert_of_slot, minlength=moe.num_experts)
    if groups.ep is None:
        return _etp_compute(moe, slots, counts.tolist(), group=groups.etp)
    ep = dist.get_world_size(groups.ep)
    send_order = torch.tensor(groups.send_order, device=slots.device)
    position_of = torch.empty_like(send_order)
    position_of[send_order] = torch.arange(len(send_order), device=slots.device)
    to_send = position_of[expert_of_slot].argsort(stable=True)
    send_counts = counts[send_order].view(ep, -1)
    recv_counts = _exchange_counts(send_counts, group=groups.ep)
    in_split, out_split = send_counts.sum(1).tolist(), recv_counts.sum(1).tolist()
    received = all_to_all_single_autograd(slots[to_send], out_split, in_split, groups.ep)
    by_expert = _expert_major(recv_counts)
    expert_out = _etp_compute(moe, received[by_expert], recv_counts.sum(0).tolist(), group=groups.etp)
    returned = all_to_all_single_autograd(expert_out[by_expert.argsort()], in_split, out_split, groups.ep)
    return returned[to_send.argsort()]


def _parallel_forward(moe: MoE, x: torch.Tensor, *, groups: MoEGroups) -> torch.Tensor:
    """MoE.forward with the slots split over tp and the experts spread over ep x etp."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    weights, indices, order, _ = moe.dispatch(flat)
    slots, expert_of_slot = flat[order // moe.top_k], indices.flatten()[order]
    if groups.tp is not None:
        bounds = split_bounds(slots.shape[0], parts=dist.get_world_size(groups.tp))
        lo, hi = bounds[dist.get_rank(groups.tp)]
        slots, expert_of_slot = split_rows(slots, bounds=bounds, group=groups.tp), expert_of_slot[lo:hi]
    expert_out = _dispatch_compute_combine(moe, slots, expert_of_slot, groups=groups)
    if groups.tp is not None:
        expert_out = gather_rows(expert_out, bounds=bounds, group=groups.tp)
    return moe.combine(flat, expert_out, weights=weights, order=order).view(shape)
