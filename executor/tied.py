"""Tied input/output embeddings across pipeline stages and under tensor parallelism.

With pp > 1 the first stage owns `tok_embeddings` and the last stage a copy as `output`
(Megatron's "word embeddings" pair): the copy starts equal (broadcast from the first stage) and
stays equal because after every backward the two gradients are summed over a two-rank group per
(dp, cp, tp) coordinate. Under tp the tied weight is vocab-sharded (Shard(0)) on both, so the
local shards pair up. Checkpoints store the copy under the embedding's FQN.
"""

from __future__ import annotations

from functools import partial

import numpy as np

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate

from planner.plan import Axis, Plan, rank_grid
from planner.graph import Transformer

COPY_FQN, TIED_FQN = "output.weight", "tok_embeddings.weight"


def tied_group(plan: Plan) -> dist.ProcessGroup | None:
    """This rank's {first stage, last stage} group (collective: every rank builds every pair)."""
    grid = np.moveaxis(rank_grid(plan).attention, plan.rank_order.index(Axis.PP), 0).reshape(plan.dims.pp, -1)
    mine = None
    for first, last in zip(grid[0].tolist(), grid[-1].tolist()):
        group = dist.new_group([first, last])
        if dist.get_rank() in (first, last):
            mine = group
    return mine


def add_output_copy(part: Transformer) -> None:
    """The last stage's head weight; split_chunk calls this on a meta-device chunk."""
    spec = part.spec
    with torch.device("meta"):
        part.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)


def tied_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The embedding on the first stage, its copy on the last (a rank may hold either, never both)."""
    found = []
    for module in modules:
        if getattr(module, "tok_embeddings", None) is not None:
            found.append(module.tok_embeddings.weight)
        elif getattr(module, "output", None) is not None:
            found.append(module.output.weight)
    return found


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def broadcast_tied(params: list[nn.Parameter], *, group: dist.ProcessGroup) -> None:
    """The copy takes the embedding's initial values (group rank 0 is the first stage)."""
    for p in params:
        dist.broadcast(_local(p), group=group, group_src=0)


@torch.no_grad()
def sum_tied_gradients(params: list[nn.Parameter], *, group: dist.ProcessGroup) -> None:
    """Embedding-lookup gradient + head gradient, on both stages (before the data-parallel reduction)."""
    for p in params:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if isinstance(grad, DTensor) and grad.placements != p.placements:
            # a vocab-parallel embedding's gradient may come back Replicate(): keep the param's shard
            grad = grad.redistribute(p.device_mesh, p.placements)
        dist.all_reduce(_local(grad), group=group)
        p.grad = grad


def _vocab_parallel_head(model: Transformer, h: torch.Tensor, *, tp_mesh: DeviceMesh) -> torch.Tensor:
    """logits = norm(h) W^T with W the vocab-sharded (Shard(0)) embedding: each rank computes its
    vocab slice, then the logits are gathered; the input gradient is summed over tp."""
    h = model.norm(h)
    if not isinstance(h, DTensor):
        h = DTensor.from_local(h, tp_mesh, [Replicate()], run_check=False)
    return F.linear(h.redistribute(placements=[Replicate()]), model.tok_embeddings.weight).full_tensor()


def use_vocab_parallel_head(model: Transformer, *, tp_mesh: DeviceMesh) -> None:
    model.head = partial(_vocab_parallel_head, model, tp_mesh=tp_mesh)
