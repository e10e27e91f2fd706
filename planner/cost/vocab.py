"""Vocabulary parallelism (Yeung et al. 2024, "Balancing Pipeline Parallelism with Vocabulary
Parallelism", arXiv 2411.05288): the embedding and the LM head (with its loss) split by vocabulary
rows over all pipeline ranks, so the first and last stages stop carrying them alone.

Per micro-batch, over the pipeline group (their Sec. 4): the last stage's final hidden states are
broadcast to every stage and the input-gradient partials all-reduced back; the softmax needs
all-reduces of the max, the sum of exponentials and the target logit (one fp32 each per token);
the embedding partial lookups are all-reduced to the first stage and its output gradient
broadcast back. We charge these as exposed (the paper hides part of them in bubbles).
"""

from __future__ import annotations

from collections import Counter

from planner.cost.fp8 import element_bytes
from planner.graph import ModelGraph
from planner.hardware import Collective, GroupSpan, HardwareProfile, group_collective_s
from planner.plan import Plan
from planner.scenario import JobSpec

VOCAB_KINDS = ("embedding", "head")
SOFTMAX_STATS = 3  # max, sum of exponentials, target logit
STAT_BYTES = 4.0


def spread_vocab(chunk_counts: list[Counter[str]], plan: Plan) -> list[Counter[str]]:
    """Chunk block-kind counts with the embedding and head divided evenly over every chunk."""
    if not plan.vocab_parallel or plan.dims.pp == 1:
        return chunk_counts
    n = len(chunk_counts)
    totals = Counter()
    for counts in chunk_counts:
        for kind in VOCAB_KINDS:
            totals[kind] += counts.get(kind, 0)
    out = []
    for counts in chunk_counts:
        c = Counter({k: v for k, v in counts.items() if k not in VOCAB_KINDS})
        for kind, total in totals.items():
            if total:
                c[kind] = total / n
        out.append(c)
    return out


def vocab_comm_s(plan: Plan, *, graph: ModelGraph, job: JobSpec, span: GroupSpan,
                 hw: HardwareProfile) -> tuple[float, float]:
    """(forward, backward) seconds of the vocabulary-parallel collectives for one micro-batch."""
    if not plan.vocab_parallel or plan.dims.pp == 1:
        return 0.0, 0.0
    tokens = plan.micro_batch_size * job.seq_len / plan.dims.cp
    hidden = tokens * graph.hidden_size * element_bytes(plan, job=job) / plan.dims.tp
    stats = tokens * SOFTMAX_STATS * STAT_BYTES
    bcast = group_collective_s(hw, Collective.ALL_GATHER, hidden, span=span)  # a broadcast moves ~ what a gather does
    reduce = group_collective_s(hw, Collective.ALL_REDUCE, hidden, span=span)
    fwd = bcast + group_collective_s(hw, Collective.ALL_REDUCE, stats, span=span) + reduce
    bwd = reduce + bcast
    return fwd, bwd
