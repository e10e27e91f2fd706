"""Vocabulary parallelism across pipeline stages (Yeung et al. 2024, arXiv 2411.05288).

Every pipeline rank holds rows [lo, hi) of the embedding and of the LM head. Per step (GPipe
order, torch.distributed p2p between neighbouring stages):
1. each rank looks up its vocabulary rows of every micro-batch's tokens (zeros elsewhere); one
   all-reduce over the pipeline group sums them into the embeddings, which stage 0 consumes;
2. the blocks run forward stage by stage; the last stage applies the final norm;
3. the normed hidden states are broadcast to every rank, each computes its logit columns, and the
   cross entropy is formed with all-reduces of the max, the sum of exponentials and the target
   logit (Megatron's vocab-parallel cross entropy); its backward needs no communication;
4. the hidden-state gradient partials are all-reduced, the blocks run backward stage by stage,
   and stage 0's embedding gradient is broadcast so each rank back-propagates its own rows.
Each step's collectives take one stacked tensor for all micro-batches (no two autograd
collectives of equal shape race in one backward: PLATFORM.md).
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from planner.graph import Transformer
from planner.plan import Plan


def vocab_range(vocab: int, *, pp: int, rank: int) -> tuple[int, int]:
    per = -(-vocab // pp)
    return min(vocab, rank * per), min(vocab, (rank + 1) * per)


class VocabShard(nn.Module):
    """This pipeline rank's embedding rows and LM-head rows (FQNs name the whole-model weights)."""

    def __init__(self, whole: Transformer, *, lo: int, hi: int, device: torch.device, seed: int) -> None:
        super().__init__()
        part = copy.deepcopy(whole)
        for key in list(part.layers):
            del part.layers[key]
        part.to_empty(device=device)
        part.init_weights(seed)  # the same per-FQN values the single-process model starts from
        self.lo, self.hi = lo, hi
        self.tok_embeddings = nn.Parameter(part.tok_embeddings.weight.detach()[lo:hi].clone())
        self.output = nn.Parameter(part.output.weight.detach()[lo:hi].clone())

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        inside = (tokens >= self.lo) & (tokens < self.hi)
        rows = (tokens - self.lo).clamp(0, self.hi - self.lo - 1)
        return F.embedding(rows, self.tok_embeddings) * inside.unsqueeze(-1)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy of logits split by vocabulary columns over `group`."""

    @staticmethod
    def forward(ctx, logits, targets, lo, group):
        top = logits.max(dim=-1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - top.unsqueeze(-1)
        exp = shifted.exp()
        stats = torch.stack([exp.sum(dim=-1), torch.zeros_like(top)])
        inside = (targets >= lo) & (targets < lo + logits.shape[-1])
        local = (targets - lo).clamp(0, logits.shape[-1] - 1)
        stats[1] = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1) * inside
        dist.all_reduce(stats, group=group)  # sum of exponentials and the target logit, in one message
        ctx.save_for_backward(exp / stats[0].unsqueeze(-1), local, inside)
        return stats[0].log() - stats[1]

    @staticmethod
    def backward(ctx, grad):
        softmax, local, inside = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, local.unsqueeze(-1), -inside.unsqueeze(-1).to(g.dtype))
        return g * grad.unsqueeze(-1), None, None, None


def _normed(stage: Transformer, h: torch.Tensor) -> torch.Tensor:
    return stage.norm(h)


class VocabPipeline:
    """One GPipe step of a vocabulary-parallel pipeline on this rank (see the module docstring)."""

    def __init__(self, stage: Transformer, shard: VocabShard, *, plan: Plan, group: dist.ProcessGroup) -> None:
        self.stage, self.shard, self.group = stage, shard, group
        self.rank, self.pp = dist.get_rank(group), plan.dims.pp
        if self.rank == self.pp - 1:
            stage.head = partial(_normed, stage)  # the last stage hands on normed hidden states, not logits

    def _peer(self, offset: int) -> int:
        return dist.get_global_rank(self.group, self.rank + offset)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, *, num_micro_batches: int) -> float:
        xs, ys = inputs.chunk(num_micro_batches), labels.chunk(num_micro_batches)
        partial = torch.stack([self.shard.embed(x) for x in xs])  # [m, b, s, h], this rank's rows
        embedded = partial.detach().clone()
        dist.all_reduce(embedded, group=self.group)
        first, last = self.rank == 0, self.rank == self.pp - 1
        ins, outs = [], []
        for k in range(num_micro_batches):
            h = embedded[k].clone() if first else self._recv(embedded[k], offset=-1)
            h.requires_grad_()
            out = self.stage(h)
            if not last:
                dist.send(out.detach().contiguous(), self._peer(1))
            ins.append(h)
            outs.append(out)
        normed = torch.stack([o.detach() for o in outs]) if last else torch.empty_like(embedded)
        dist.broadcast(normed, group=self.group, group_src=self.pp - 1)
        normed.requires_grad_()
        logits = normed @ self.shard.output.T
        per_token = _VocabParallelCrossEntropy.apply(logits, torch.stack(ys), self.shard.lo, self.group)
        loss = per_token.mean()
        loss.backward()
        grad_normed = normed.grad.contiguous()
        dist.all_reduce(grad_normed, group=self.group)
        for k in reversed(range(num_micro_batches)):
            grad = grad_normed[k] if last else self._recv(outs[k], offset=1)
            torch.autograd.backward(outs[k], grad)
            if not first:
                dist.send(ins[k].grad.contiguous(), self._peer(-1))
        grad_embedded = torch.stack([h.grad for h in ins]) if first else torch.empty_like(embedded)
        dist.broadcast(grad_embedded, group=self.group, group_src=0)
        partial.backward(grad_embedded)
        return loss.item()

    def _recv(self, like: torch.Tensor, *, offset: int) -> torch.Tensor:
        """Activations from the previous stage (offset -1) or gradients from the next (+1)."""
        buf = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        dist.recv(buf, self._peer(offset))
        return buf


def vocab_parallel_rank(whole: Transformer, plan: Plan, *, pp_rank: int, group: dist.ProcessGroup,
                        device: torch.device, seed: int, stage: Transformer) -> tuple[list[nn.Module], VocabPipeline]:
    """The stage's blocks without the embedding / head, plus its vocabulary shard."""
    stage.tok_embeddings = None
    stage.output = None
    lo, hi = vocab_range(whole.spec.vocab_size, pp=plan.dims.pp, rank=pp_rank)
    shard = VocabShard(whole, lo=lo, hi=hi, device=device, seed=seed)
    return [stage, shard], VocabPipeline(stage, shard, plan=plan, group=group)
