"""Packed variable-length batches: documents concatenated into rows, attention masked per document.

Rows and their data-parallel assignment come from planner.scenario.sequences (the rule the cost
model prices). Each document piece is its own sequence: a token attends only to earlier tokens of
its piece (causal AND same-document mask) and RoPE positions restart at 0 per piece, so a packed
row computes exactly what running its pieces one by one would (the loss equals the unpacked
reference). DocumentAttention also counts the query-key pairs it lets through, so the run
measures the per-rank attention work the plan predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from executor.data import STEP_SEED_STRIDE, MAX_STRIDE
from planner.graph import Transformer, expand_kv
from planner.plan import Plan, Recompute
from planner.scenario import BalancePolicy, JobSpec
from planner.scenario.sequences import assign_rows, step_rows

PIECE_SEED_STRIDE = 104729  # any odd constant: keeps per-piece generators apart


@dataclass(frozen=True, slots=True, kw_only=True)
class PackedRows:
    """[rows, seq_len] tensors: inputs, labels, the piece index of each token and its position in the piece."""

    inputs: torch.Tensor
    labels: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor
    pieces: list[list[int]]

    def take(self, rows: list[int]) -> PackedRows:
        index = torch.tensor(rows, dtype=torch.long)
        return PackedRows(inputs=self.inputs[index], labels=self.labels[index], doc_ids=self.doc_ids[index],
                          positions=self.positions[index], pieces=[self.pieces[i] for i in rows])


def piece_tokens(step: int, row: int, piece: int, *, length: int, vocab: int, seed: int) -> torch.Tensor:
    """length + 1 tokens of one document piece: a seeded progression (learnable, as executor.data)."""
    gen = torch.Generator().manual_seed((seed * STEP_SEED_STRIDE + step) * PIECE_SEED_STRIDE + row * 1009 + piece)
    start = torch.randint(vocab, (1,), generator=gen)
    stride = torch.randint(1, MAX_STRIDE + 1, (1,), generator=gen)
    return (start + stride * torch.arange(length + 1)) % vocab


def packed_batch(step: int, *, job: JobSpec, vocab: int, seed: int) -> PackedRows:
    """Every row of the step (the same on every rank)."""
    assert job.sequences is not None, "packed batches need [job.sequences]"
    rows = step_rows(job.sequences, seq_len=job.seq_len, global_batch=job.global_batch, step=step)
    cols = {name: [] for name in ("inputs", "labels", "doc_ids", "positions")}
    for r, pieces in enumerate(rows):
        parts = [piece_tokens(step, r, p, length=n, vocab=vocab, seed=seed) for p, n in enumerate(pieces)]
        cols["inputs"].append(torch.cat([t[:-1] for t in parts]))
        cols["labels"].append(torch.cat([t[1:] for t in parts]))
        cols["doc_ids"].append(torch.cat([torch.full((n,), p) for p, n in enumerate(pieces)]))
        cols["positions"].append(torch.cat([torch.arange(n) for n in pieces]))
    return PackedRows(**{k: torch.stack(v) for k, v in cols.items()}, pieces=rows)


def rank_rows(batch: PackedRows, *, job: JobSpec, dp: int, dp_rank: int,
              balance: BalancePolicy | None = None) -> PackedRows:
    """This data-parallel rank's rows under the plan's balance policy (None = the job's)."""
    loads = assign_rows(batch.pieces, ranks=dp, policy=balance or job.sequences.balance)
    return batch.take(list(loads.rows[dp_rank]))


@dataclass(slots=True)
class DocumentState:
    """The micro-batch in flight (set before each forward) and the work counted so far."""

    doc_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    pairs: int = 0  # causal same-document query-key pairs attended (forward passes)
    tokens: int = 0
    per_step: list[tuple[int, int]] = field(default_factory=list)

    def close_step(self) -> None:
        self.per_step.append((self.tokens, self.pairs))
        self.tokens = self.pairs = 0


class DocumentAttention(nn.Module):
    """Causal attention restricted to each token's own document piece."""

    def __init__(self, state: DocumentState) -> None:
        super().__init__()
        self.state = state

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        docs = self.state.doc_ids
        s = q.shape[2]
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        mask = (docs[:, :, None] == docs[:, None, :]) & causal  # [B, S, S]
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])


class _CountingAttention(DocumentAttention):
    """The first block's core also counts the work (every block attends the same pairs)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        docs = self.state.doc_ids
        causal = torch.ones(docs.shape[1], docs.shape[1], dtype=torch.bool, device=docs.device).tril()
        self.state.pairs += int(((docs[:, :, None] == docs[:, None, :]) & causal).sum())
        self.state.tokens += docs.numel()
        return super().forward(q, k, v)


def apply_documents(model: Transformer, state: DocumentState) -> None:
    """Document-masked cores in every block; RoPE rows by position inside each piece."""
    for n, block in enumerate(model.layers.values()):
        block.attention.core = (_CountingAttention if n == 0 else DocumentAttention)(state)
    if model.uses_rope:
        table = model.freqs
        model.rope = lambda _s: table[state.positions.to(table.device)].unsqueeze(1)  # [B, 1, S, D/2, 2]


def check_documents(plan: Plan, job: JobSpec) -> None:
    """One-line ValueError for packed batches this executor cannot run."""
    if job.sequences is None:
        return
    if plan.dims.cp > 1 or plan.dims.pp > 1 or plan.sequence_parallel or plan.recompute != Recompute.NONE:
        raise ValueError("job.sequences: packed documents run here with cp=1, pp=1, no sequence parallelism "
                         "and no recompute")
    if (plan.balance or job.sequences.balance) == BalancePolicy.ZEPPELIN:
        raise ValueError("job.sequences.balance: zeppelin is priced by the planner but not run by this executor; "
                         "use none or sort-and-pack")


@torch.no_grad()
def measured_loads(state: DocumentState, *, dp_rank: int, dp: int) -> list[list[list[int]]]:
    """Per step, per data-parallel rank: [tokens, attention pairs] this run fed its attention cores."""
    steps = len(state.per_step)
    world, me = dist.get_world_size(), dist.get_rank()
    t = torch.zeros(world, max(steps, 1), 3, dtype=torch.float64)
    for s, (tokens, pairs) in enumerate(state.per_step):
        t[me, s] = torch.tensor([dp_rank + 1, tokens, pairs], dtype=torch.float64)
    dist.all_reduce(t)
    out = [[[0, 0] for _ in range(dp)] for _ in range(steps)]
    for r in range(world):
        for s in range(steps):
            d = int(t[r, s, 0]) - 1
            out[s][d] = [int(t[r, s, 1]), int(t[r, s, 2])]
    return out
