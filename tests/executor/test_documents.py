"""The Llama-3 8B long-document scenario: the rows the executor would feed each data-parallel rank
carry the tokens and attention work the plan prices (the gloo parity runs check the same on a
tiny model, end to end)."""

from __future__ import annotations

from pathlib import Path

import torch

from executor.documents import packed_batch, rank_rows
from planner.cost import rank_loads
from planner.scenario import BalancePolicy, load_scenario

REPO = Path(__file__).resolve().parents[2]


def _fed(rows) -> tuple[int, int]:
    """Tokens and causal same-document pairs of the doc_ids tensor a rank's attention gets."""
    tokens, pairs = 0, 0
    for ids in rows.doc_ids:
        counts = torch.bincount(ids)
        tokens += int(ids.numel())
        pairs += int((counts * (counts + 1) // 2).sum())
    return tokens, pairs


def test_llama3_8b_scenario_rank_loads_match_the_plan():
    sc = load_scenario(REPO / "scenarios" / "llama3-8b-longdocs_h100x64.toml")
    dp = 64
    for balance in (BalancePolicy.NONE, BalancePolicy.SORT_AND_PACK):
        job = sc.job.model_copy(update={"sequences": sc.job.sequences.model_copy(update={"balance": balance})})
        batch = packed_batch(0, job=job, vocab=sc.model.vocab_size, seed=0)
        predicted = rank_loads(job, dp=dp, step=0)
        fed = [_fed(rank_rows(batch, job=job, dp=dp, dp_rank=r)) for r in range(dp)]
        assert [t for t, _ in fed] == list(predicted.tokens)
        assert [p for _, p in fed] == [int(p) for p in predicted.pairs]
    # balancing narrows the spread of the slowest rank's attention work
    assert max(predicted.pairs) / (sum(predicted.pairs) / dp) < 1.1
