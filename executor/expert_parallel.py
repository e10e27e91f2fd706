"""Expert parallelism: each EP rank keeps its experts' rows; tokens travel by all_to_all_single.

Dispatch and combine are the autograd-aware functional all-to-alls, so the backward pass sends
gradients back along the same routes (GShard, Lepikhin et al. 2020). Placement comes from the
plan (per MoE layer, the EP rank of every expert), so an ILP placement runs as planned.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd

from planner.plan import Plan
from planner.scenario import ModelSpec
from planner.transformer import MoE

EXPERT_PARAMS = ("w1", "w2", "w3")


def layer_placement(plan: Plan, spec: ModelSpec, *, moe_ordinal: int) -> list[int]:
    """EP rank of every expert for the moe_ordinal-th MoE layer (contiguous blocks by default)."""
    if plan.expert_placement is not None:
        return list(plan.expert_placement[moe_ordinal])
    per_rank = spec.num_local_experts // plan.dims.ep
    return [e // per_rank for e in range(spec.num_local_experts)]


def local_experts(placement: list[int], *, ep_rank: int) -> list[int]:
    """Global ids of the experts on ep_rank, in the order their rows are stored."""
    return [e for e, r in enumerate(placement) if r == ep_rank]


def shard_experts(moe: MoE, *, placement: list[int], ep_rank: int, group: dist.ProcessGroup) -> None:
    """Keep only ep_rank's expert rows and route this layer's tokens through dispatch/combine."""
    owned = local_experts(placement, ep_rank=ep_rank)
    for name in EXPERT_PARAMS:
        full = getattr(moe.experts, name)
        if full is not None:
            setattr(moe.experts, name, nn.Parameter(full.detach()[owned].clone()))
    moe.experts.global_ids = owned
    # Experts sorted by (owner rank, row on the owner): the order tokens are sent in.
    send_order = sorted(range(len(placement)), key=lambda e: (placement[e], owned_row(placement, e)))
    moe.forward = partial(_ep_forward, moe, send_order=send_order, group=group)


def owned_row(placement: list[int], expert: int) -> int:
    return sum(1 for e in range(expert) if placement[e] == placement[expert])


def _exchange_counts(counts: torch.Tensor, *, group: dist.ProcessGroup) -> torch.Tensor:
    """counts [ep, E_local] tokens this rank sends to each rank's experts -> received [ep, E_local]."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received.view(-1), counts.reshape(-1).contiguous(), group=group)
    return received


def _ep_forward(moe: MoE, x: torch.Tensor, *, send_order: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """MoE.forward with the expert compute spread over the EP group (same routing, same combine)."""
    shape, ep = x.shape, dist.get_world_size(group)
    flat = x.reshape(-1, shape[-1])
    weights, indices = moe.route(flat)
    order, counts = moe._plan_dispatch(indices, moe.capacity(flat.shape[0]))
    if moe.record_routing:
        moe._record(indices, counts)
    token_of_slot = order // moe.top_k
    # slots are grouped by expert id; regroup them by destination (owner rank, row)
    position_of = torch.empty(len(send_order), dtype=torch.long)
    position_of[torch.tensor(send_order)] = torch.arange(len(send_order))
    expert_of_slot = indices.flatten()[order]
    to_send = position_of.to(flat.device)[expert_of_slot].argsort(stable=True)
    send_counts = torch.tensor(counts)[torch.tensor(send_order)].view(ep, -1).to(flat.device)
    recv_counts = _exchange_counts(send_counts, group=group)
    in_split, out_split = send_counts.sum(1).tolist(), recv_counts.sum(1).tolist()
    received = all_to_all_single_autograd(flat[token_of_slot][to_send], out_split, in_split, group)
    # received is grouped by source rank then local expert; the experts want expert-major order
    local_expert = torch.arange(recv_counts.shape[1], device=flat.device).repeat(ep)
    by_expert = local_expert.repeat_interleave(recv_counts.reshape(-1)).argsort(stable=True)
    expert_out = moe.experts(received[by_expert], recv_counts.sum(0).tolist())
    returned = all_to_all_single_autograd(expert_out[by_expert.argsort()], in_split, out_split, group)
    slot_out = returned[to_send.argsort()] * weights.flatten()[order].unsqueeze(-1)
    out = torch.zeros_like(flat).index_add(0, token_of_slot, slot_out)
    if moe.shared_experts is not None:
        out = out + moe.shared_experts(flat)
    return out.view(shape)
