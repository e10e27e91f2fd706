"""Data parallelism without FSDP: averaged gradients (ZeRO-0) and a dp-sharded optimizer (ZeRO-1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from executor.mesh import Meshes
from executor.offload import HostOptimizer
from planner.plan import Axis
from planner.scenario import JobSpec, OptimizerKind

ADAMW_BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
SGD_MOMENTUM = 0.9


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroup:
    """Parameters replicated over `group`; their gradients are summed there and divided by `divisor`.

    divisor is dp*cp for every parameter: each rank's loss is a mean over its own tokens, and the
    step loss is the mean over the dp*cp token shards. Expert weights live on fewer replicas
    (edp), but their gradients already hold every EP peer's tokens after the all-to-all backward.
    """

    params: list[nn.Parameter]
    group: dist.ProcessGroup
    divisor: int


def replica_groups(modules: list[nn.Module], *, meshes: Meshes) -> list[ReplicaGroup]:
    divisor = meshes.size(Axis.DP) * meshes.size(Axis.CP)
    dense, expert = [], []
    for module in modules:
        for fqn, param in module.named_parameters():
            (expert if ".experts." in fqn else dense).append(param)
    groups = [ReplicaGroup(params=dense, group=meshes.dp_cp.get_group(), divisor=divisor)]
    if expert:
        groups.append(ReplicaGroup(params=expert, group=meshes.group(Axis.EDP), divisor=divisor))
    return groups


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_gradients(groups: list[ReplicaGroup]) -> None:
    """One flat all-reduce per replica group (bucketed like DDP, but after the backward)."""
    for g in groups:
        grads = [_local(p.grad) for p in g.params if p.grad is not None]
        if not grads:
            continue
        flat = torch.cat([t.reshape(-1) for t in grads])
        if dist.get_world_size(g.group) > 1:
            dist.all_reduce(flat, group=g.group)
        if g.divisor > 1:
            flat.div_(g.divisor)
        for t, new in zip(grads, flat.split([t.numel() for t in grads])):
            t.copy_(new.view_as(t))


def make_optimizer(params: list[nn.Parameter], *, job: JobSpec) -> torch.optim.Optimizer:
    match job.optimizer.kind:
        case OptimizerKind.ADAMW:
            return torch.optim.AdamW(params, lr=job.optimizer.lr, betas=ADAMW_BETAS,
                                     weight_decay=WEIGHT_DECAY, foreach=False)
        case OptimizerKind.SGD:
            return torch.optim.SGD(params, lr=job.optimizer.lr, momentum=SGD_MOMENTUM, foreach=False)


class PlanOptimizer:
    """The optimizer of one rank: all its parameters, or with ZeRO-1 only those it owns.

    ZeRO-1 (Rajbhandari et al. 2020, P_os): parameters are dealt greedily by size to the ranks of
    their replica group; each rank keeps optimizer state for its share, steps it, and broadcasts
    the updated values (one flat broadcast per owner).
    """

    def __init__(self, groups: list[ReplicaGroup], *, job: JobSpec, shard: bool, offload: bool = False) -> None:
        self.groups = groups
        self.owners: list[tuple[ReplicaGroup, int, list[nn.Parameter]]] = []
        owned: list[nn.Parameter] = []
        for g in groups:
            size = dist.get_world_size(g.group) if shard else 1
            shares = _deal(g.params, size)
            owned += shares[dist.get_rank(g.group) if shard else 0]
            if size > 1:
                self.owners += [(g, rank, share) for rank, share in enumerate(shares) if share]
        self.host = HostOptimizer(owned, job=job, make=make_optimizer) if owned and offload else None
        self.inner = self.host.inner if self.host else make_optimizer(owned, job=job) if owned else None

    def step(self) -> None:
        if self.host is not None:
            self.host.step()  # gradients to the host pool, step there, weights back
        elif self.inner is not None:
            self.inner.step()
        with torch.no_grad():
            for g, rank, share in self.owners:
                flat = torch.cat([_local(p).reshape(-1) for p in share])
                dist.broadcast(flat, group=g.group, group_src=rank)
                for p, new in zip(share, flat.split([_local(p).numel() for p in share])):
                    _local(p).copy_(new.view_as(_local(p)))

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g.params:
                p.grad = None


def _deal(params: list[nn.Parameter], ranks: int) -> list[list[nn.Parameter]]:
    """Largest first to the least-loaded rank; the order inside a share follows `params`."""
    loads, owner = [0] * ranks, {}
    for i in sorted(range(len(params)), key=lambda i: -_local(params[i]).numel()):
        rank = loads.index(min(loads))
        owner[i] = rank
        loads[rank] += _local(params[i]).numel()
    return [[p for i, p in enumerate(params) if owner[i] == r] for r in range(ranks)]
