"""Split a replicated tensor's rows over a group and gather them back, with the matching gradients.

Megatron's scatter-to / gather-from "sequence parallel region" pair: every rank holds the same
full tensor; split keeps this rank's rows (backward: all-gather the row gradients, so the full
tensor's gradient is whole on every rank); gather rebuilds the full tensor from every rank's rows
(backward: keep this rank's rows of the - replicated - gradient). Row counts may be uneven:
blocks are padded to the largest for all_gather_into_tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def split_bounds(rows: int, *, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) of each part, sizes differing by at most one (larger first)."""
    base, extra = divmod(rows, parts)
    sizes = [base + (i < extra) for i in range(parts)]
    starts = [sum(sizes[:i]) for i in range(parts)]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def _all_gather_rows(local: torch.Tensor, *, bounds: list[tuple[int, int]], group: dist.ProcessGroup) -> torch.Tensor:
    width = max(hi - lo for lo, hi in bounds)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    out = local.new_empty((width * len(bounds), *local.shape[1:]))
    dist.all_gather_into_tensor(out, padded.contiguous(), group=group)
    blocks = out.view(len(bounds), width, *local.shape[1:])
    return torch.cat([blocks[i, : hi - lo] for i, (lo, hi) in enumerate(bounds)])


class _SplitRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, full: torch.Tensor, bounds: list[tuple[int, int]], group: dist.ProcessGroup) -> torch.Tensor:
        ctx.bounds, ctx.group = bounds, group
        lo, hi = bounds[dist.get_rank(group)]
        return full[lo:hi].clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_gather_rows(grad.contiguous(), bounds=ctx.bounds, group=ctx.group), None, None


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, bounds: list[tuple[int, int]], group: dist.ProcessGroup) -> torch.Tensor:
        ctx.bounds, ctx.group = bounds, group
        return _all_gather_rows(local.contiguous(), bounds=bounds, group=group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        lo, hi = ctx.bounds[dist.get_rank(ctx.group)]
        return grad[lo:hi].clone(), None, None


def split_rows(full: torch.Tensor, *, bounds: list[tuple[int, int]], group: dist.ProcessGroup) -> torch.Tensor:
    return _SplitRows.apply(full, bounds, group)


def gather_rows(local: torch.Tensor, *, bounds: list[tuple[int, int]], group: dist.ProcessGroup) -> torch.Tensor:
    return _GatherRows.apply(local, bounds, group)
