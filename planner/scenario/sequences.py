"""Variable-length batches: [job.sequences], document-length mixes, packing and DP balance.

One copy of each rule, shared by the cost model (which prices the loads) and the executor (which
builds the batches), so the per-rank work the plan predicts is the work the run does. Pure numpy.

A batch is sampled as documents (lengths drawn from the mix), packed into rows of seq_len by
concat-and-chunk (documents concatenated, cut at row ends: no padding; Pouransari et al. 2024,
arXiv 2405.13226 Sec. 2), then rows are dealt to the data-parallel ranks by the balance policy.
Attention is document-masked (a token sees only its own document piece), so a piece of L tokens
costs L(L+1)/2 causal score pairs instead of the row's S(S+1)/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.plan import BalancePolicy

_FROZEN = ConfigDict(frozen=True, extra="forbid")
STEP_SEED_STRIDE = 7919  # as executor.data: per-step generators kept apart


class Packing(StrEnum):
    CONCAT_CHUNK = "concat-chunk"


class LengthBin(BaseModel):
    """Documents of max_tokens or fewer (above the previous bin), `share` of all documents."""

    model_config = _FROZEN
    max_tokens: int = Field(gt=0)
    share: float = Field(gt=0)


# Named mixes: share of DOCUMENTS per length bucket. "web" and "code" follow the shape of the
# RefinedWeb and StarCoder-style histograms in Pouransari et al. 2024 (arXiv 2405.13226, Fig. 2:
# most web documents under 1k tokens, code with a longer tail); "long-tail" adds the book/arXiv
# tail that long-context mixes upweight (ProLong, Gao et al. 2024, arXiv 2410.02660, Sec. 3:
# books and code repositories past 64k). Bucket shares are our reading of those figures, not
# published tables; pass a histogram for a measured mix.
DATA_MIXES: dict[str, tuple[tuple[int, float], ...]] = {
    "web": ((256, 0.30), (1024, 0.45), (4096, 0.20), (16384, 0.045), (65536, 0.005)),
    "code": ((256, 0.20), (1024, 0.35), (4096, 0.30), (16384, 0.12), (65536, 0.03)),
    "long-tail": ((512, 0.40), (2048, 0.35), (8192, 0.17), (32768, 0.06), (131072, 0.02)),
}


class SequencesSpec(BaseModel):
    """[job.sequences]: the document-length distribution, packing and DP balance policy."""

    model_config = _FROZEN
    mix: str | None = Field(None, description=f"named mix: {', '.join(DATA_MIXES)}")
    histogram: list[LengthBin] | None = None
    packing: Packing = Packing.CONCAT_CHUNK
    balance: BalancePolicy = BalancePolicy.NONE
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> SequencesSpec:
        if (self.mix is None) == (self.histogram is None):
            raise ValueError("sequences: give exactly one of mix (a name) or histogram (bins)")
        if self.mix is not None and self.mix not in DATA_MIXES:
            raise ValueError(f"sequences.mix: unknown mix '{self.mix}'; known: {', '.join(DATA_MIXES)}")
        if self.histogram is not None:
            bounds = [b.max_tokens for b in self.histogram]
            if bounds != sorted(set(bounds)):
                raise ValueError("sequences.histogram: max_tokens must be strictly increasing")
        return self

    def bins(self) -> tuple[tuple[int, float], ...]:
        if self.histogram is not None:
            return tuple((b.max_tokens, b.share) for b in self.histogram)
        return DATA_MIXES[self.mix]


def sample_documents(spec: SequencesSpec, *, num_tokens: int, seed: int) -> list[int]:
    """Document lengths (uniform inside their bin) until they cover num_tokens; the last is cut."""
    bins = spec.bins()
    highs = np.array([b for b, _ in bins])
    lows = np.concatenate([[1], highs[:-1] + 1])
    probs = np.array([s for _, s in bins], dtype=float)
    probs /= probs.sum()
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < num_tokens:
        b = rng.choice(len(bins), p=probs)
        n = int(rng.integers(lows[b], highs[b] + 1))
        n = min(n, num_tokens - total)
        lengths.append(n)
        total += n
    return lengths


def pack_rows(lengths: list[int], *, seq_len: int) -> list[list[int]]:
    """Concat-and-chunk: each row lists its document pieces' lengths (summing to seq_len)."""
    rows, row, room = [], [], seq_len
    for n in lengths:
        while n:
            take = min(n, room)
            row.append(take)
            n, room = n - take, room - take
            if room == 0:
                rows.append(row)
                row, room = [], seq_len
    assert not row, "sample_documents covers whole rows"
    return rows


def attention_pairs(pieces: list[int]) -> int:
    """Causal score pairs of a row under document masking."""
    return sum(n * (n + 1) // 2 for n in pieces)


@dataclass(frozen=True, slots=True, kw_only=True)
class RankLoads:
    """One step's work per data-parallel rank: rows (indices into the packed batch), tokens,
    causal attention pairs, and tokens that move between ranks (Zeppelin's split documents)."""

    rows: tuple[tuple[int, ...], ...]
    tokens: tuple[int, ...]
    pairs: tuple[float, ...]
    moved_tokens: int = 0


def step_rows(spec: SequencesSpec, *, seq_len: int, global_batch: int, step: int) -> list[list[int]]:
    """The packed rows of one optimizer step (the same on every rank and in the cost model)."""
    seed = spec.seed * STEP_SEED_STRIDE + step
    return pack_rows(sample_documents(spec, num_tokens=seq_len * global_batch, seed=seed), seq_len=seq_len)


def assign_rows(rows: list[list[int]], *, ranks: int, policy: BalancePolicy) -> RankLoads:
    """Deal rows to `ranks` equal-sized shares by the policy; per-rank loads."""
    per = len(rows) // ranks
    assert per * ranks == len(rows), "global_batch must divide over the data-parallel ranks"
    cut = len(rows) and sum(rows[0]) / 2  # Zeppelin splits documents longer than half a row
    split = policy == BalancePolicy.ZEPPELIN
    work = [attention_pairs([n for n in r if not (split and n > cut)]) for r in rows]
    match policy:
        case BalancePolicy.NONE:
            shares = [list(range(k * per, (k + 1) * per)) for k in range(ranks)]
        case BalancePolicy.SORT_AND_PACK | BalancePolicy.ZEPPELIN:
            shares = _lpt(work, ranks=ranks, per=per)
    tokens = tuple(sum(sum(rows[i]) for i in s) for s in shares)
    pairs = [float(sum(work[i] for i in s)) for s in shares]
    moved = 0
    if split:  # the long documents' attention spread evenly over every rank
        long_docs = [n for r in rows for n in r if n > cut]
        pooled = sum(n * (n + 1) / 2 for n in long_docs)
        pairs = [p + pooled / ranks for p in pairs]
        moved = int(sum(long_docs) * (ranks - 1) / ranks)
    return RankLoads(rows=tuple(tuple(s) for s in shares), tokens=tokens, pairs=tuple(pairs), moved_tokens=moved)


def _lpt(work: list[int], *, ranks: int, per: int) -> list[list[int]]:
    """Heaviest row first to the least-loaded rank that still has room (rows keep sampling order)."""
    loads, shares = [0] * ranks, [[] for _ in range(ranks)]
    for i in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        k = min((r for r in range(ranks) if len(shares[r]) < per), key=lambda r: (loads[r], r))
        shares[k].append(i)
        loads[k] += work[i]
    return [sorted(s) for s in shares]
