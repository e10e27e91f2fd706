"""Variable-length batches: document-masked attention work and data-parallel imbalance.

The packed rows and their assignment to data-parallel ranks come from planner.scenario.sequences
(the rule the executor runs); here they are reduced to two numbers over a few sampled steps:
- attention_factor: causal score pairs under document masking / the full row's pairs (Pouransari
  et al. 2024 Sec. 2: masked attention costs follow the documents, not the row);
- imbalance: the slowest rank's attention work / the mean rank's, averaged over steps: every rank
  waits for the slowest at the gradient reduction, so the step runs at the maximum.
Zeppelin's split documents also move their tokens between ranks (moved_fraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.cost.fp8 import element_bytes
from planner.graph import ModelGraph
from planner.hardware import Collective, GroupSpan, HardwareProfile, group_collective_s
from planner.plan import BalancePolicy, Plan, Recompute
from planner.scenario import JobSpec, RankLoads, SequencesSpec
from planner.scenario.sequences import assign_rows, step_rows

SAMPLED_STEPS = 4  # steps sampled per estimate: the per-step maximum is what the run pays


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceLoads:
    attention_factor: float = 1.0
    imbalance: float = 1.0
    moved_fraction: float = 0.0  # of each rank's tokens, exchanged per layer (Zeppelin)


@lru_cache(maxsize=256)
def _loads(spec: SequencesSpec, seq_len: int, global_batch: int, dp: int, policy: BalancePolicy) -> SequenceLoads:
    full = global_batch * seq_len * (seq_len + 1) / 2
    factor = imbalance = moved = 0.0
    for step in range(SAMPLED_STEPS):
        rows = step_rows(spec, seq_len=seq_len, global_batch=global_batch, step=step)
        loads = assign_rows(rows, ranks=dp, policy=policy)
        factor += sum(loads.pairs) / full
        imbalance += max(loads.pairs) / (sum(loads.pairs) / dp)
        moved += loads.moved_tokens / (global_batch * seq_len)
    n = SAMPLED_STEPS
    return SequenceLoads(attention_factor=factor / n, imbalance=imbalance / n, moved_fraction=moved / n)


def sequence_loads(job: JobSpec, *, dp: int, balance: BalancePolicy | None = None) -> SequenceLoads:
    """Loads of the job's document mix over `dp` ranks under `balance` (None = the job's policy);
    fixed full rows without [job.sequences]."""
    if job.sequences is None:
        return SequenceLoads()
    return _loads(job.sequences, job.seq_len, job.global_batch, dp, balance or job.sequences.balance)


def rank_loads(job: JobSpec, *, dp: int, step: int, balance: BalancePolicy | None = None) -> RankLoads:
    """The per-rank tokens and attention pairs the plan predicts for `step` (what the executor measures)."""
    assert job.sequences is not None, "rank_loads needs [job.sequences]"
    rows = step_rows(job.sequences, seq_len=job.seq_len, global_batch=job.global_batch, step=step)
    return assign_rows(rows, ranks=dp, policy=balance or job.sequences.balance)


def masked_times(t, *, loads: SequenceLoads, recompute: Recompute):
    """A block's PassTimes (compute.PassTimes) with its attention scaled to the slowest rank's
    document-masked work; a recomputed forward replays the scaled forward (full) or attention (selective)."""
    if loads.attention_factor == 1.0 and loads.imbalance == 1.0:
        return t
    k = loads.attention_factor * loads.imbalance
    fwd = t.fwd_s + t.attention_fwd_s * (k - 1)
    match recompute:
        case Recompute.FULL:
            replay = fwd if t.recompute_s else 0.0
        case Recompute.SELECTIVE:
            replay = t.recompute_s * k
        case Recompute.NONE:
            replay = t.recompute_s
    return type(t)(fwd_s=fwd, bwd_input_s=t.bwd_input_s + t.attention_bwd_s * (k - 1), bwd_weight_s=t.bwd_weight_s,
                   recompute_s=replay, attention_fwd_s=t.attention_fwd_s * k, attention_bwd_s=t.attention_bwd_s * k)


def moved_tokens_s(plan: Plan, loads: SequenceLoads, *, graph: ModelGraph, job: JobSpec, span: GroupSpan,
                   hw: HardwareProfile) -> float:
    """Zeppelin's split documents: their hidden states re-laid out over the dp x cp ranks before and
    after attention, one layer, one pass (two blocking all-to-alls); 0 for other policies."""
    if not loads.moved_fraction:
        return 0.0
    size = loads.moved_fraction * plan.micro_batch_size * job.seq_len / plan.dims.cp * element_bytes(plan, job=job)
    return 2 * group_collective_s(hw, Collective.ALL_TO_ALL, size * graph.hidden_size / plan.dims.tp, span=span)


def loads_notes(loads: SequenceLoads) -> dict[str, float]:
    """What the report shows of the loads (Estimate.notes)."""
    return {"attention_factor": loads.attention_factor, "dp_imbalance": loads.imbalance,
            "moved_token_fraction": loads.moved_fraction}
