"""Context parallelism by kind: zigzag ring, bidirectional ring, Ulysses all-to-all, hybrid.

Per layer and micro-batch, what each CP kind moves and what of it can hide behind attention:
- ring (Liu et al. 2023): r-1 steps, each passing this rank's K,V block to the next rank,
  overlapped with the attention of the block in hand; backward passes K,V and dK,dV (2x).
- ring-bidirectional: half of the K,V block each way per step, so a duplex link moves the block
  in half the time (TokenRing, Wang et al. 2024, uses both link directions the same way);
  two messages per step, so twice the per-message latency.
- all-to-all (DeepSpeed-Ulysses, Jacobs et al. 2023, Sec. 3): q,k,v scattered by heads and
  gathered by sequence before attention, the output back after: blocking, nothing overlaps.
  GQA K,V heads fewer than the all-to-all degree are replicated first.
- hybrid (USP, Fang & Zhao 2024, arXiv 2405.07719): all-to-all over `cp_a2a` ranks (inside the
  node), ring over cp / cp_a2a ranks with the longer gathered sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.graph import ModelGraph
from planner.hardware import Collective, GroupSpan, HardwareProfile, group_collective_s, p2p_s
from planner.plan import CpKind, Plan, Recompute


@dataclass(frozen=True, slots=True, kw_only=True)
class CpComm:
    """CP seconds of one layer for one micro-batch: ring traffic (hideable) and all-to-all (exposed)."""

    ring_fwd_s: float = 0.0
    ring_bwd_s: float = 0.0
    a2a_fwd_s: float = 0.0
    a2a_bwd_s: float = 0.0


def kv_heads_local(plan: Plan, *, graph: ModelGraph) -> int:
    """K,V heads one rank attends with after TP and the all-to-all (replicated when too few)."""
    kv = max(1, graph.num_key_value_heads // plan.dims.tp)
    u = plan.ulysses_degree()
    return max(1, kv // u) if kv >= u else 1


def cp_layer_comm(plan: Plan, *, graph: ModelGraph, tok_bytes: float, ring: GroupSpan, a2a: GroupSpan,
                  hw: HardwareProfile) -> CpComm:
    """`tok_bytes`: one micro-batch's bytes per hidden unit on one CP rank (mbs * S/cp * dtype)."""
    if plan.dims.cp == 1:
        return CpComm()
    head_dim = graph.hidden_size // graph.num_attention_heads
    u = plan.ulysses_degree()
    q_heads = graph.num_attention_heads // plan.dims.tp
    a2a_f = 0.0
    if u > 1:
        kv_sent = max(graph.num_key_value_heads // plan.dims.tp, u)  # replicated up to u heads
        qkv = tok_bytes * (q_heads + 2 * kv_sent) * head_dim
        out = tok_bytes * q_heads * head_dim
        a2a_f = (group_collective_s(hw, Collective.ALL_TO_ALL, qkv, span=a2a)
                 + group_collective_s(hw, Collective.ALL_TO_ALL, out, span=a2a))
    ring_f = _ring_s(plan, kv_bytes=2 * tok_bytes * u * kv_heads_local(plan, graph=graph) * head_dim,
                     span=ring, hw=hw)
    replay = 2.0 if plan.recompute == Recompute.FULL else 1.0  # a recomputed forward repeats its all-to-alls
    return CpComm(ring_fwd_s=ring_f, ring_bwd_s=2 * ring_f, a2a_fwd_s=a2a_f, a2a_bwd_s=a2a_f * replay)


def _ring_s(plan: Plan, *, kv_bytes: float, span: GroupSpan, hw: HardwareProfile) -> float:
    steps = span.num_ranks - 1
    if steps <= 0:
        return 0.0
    match plan.cp_kind:
        case CpKind.RING_BIDIRECTIONAL:
            # both halves in flight at once on a duplex link: one half's time, plus the second
            # message's start-up (a 1-byte transfer is the latency)
            return steps * (p2p_s(hw, kv_bytes / 2, span=span) + p2p_s(hw, 1.0, span=span))
        case _:
            return steps * p2p_s(hw, kv_bytes, span=span)


def cp_exposed_s(c: CpComm, *, attention_fwd_s: float, attention_bwd_s: float, ring_ranks: int,
                 overlap: bool = True) -> tuple[float, float]:
    """Exposed CP seconds (fwd, bwd): the ring hides behind the attention of the other r-1 blocks,
    unless the attention kernel is persistent (`overlap` False): each step's send/recv kernels then
    wait for the step's attention kernel to leave the SMs, and the ring runs in series with it."""
    share = (ring_ranks - 1) / ring_ranks if ring_ranks > 1 and overlap else 0.0
    fwd = c.a2a_fwd_s + max(0.0, c.ring_fwd_s - attention_fwd_s * share)
    bwd = c.a2a_bwd_s + max(0.0, c.ring_bwd_s - attention_bwd_s * share)
    return fwd, bwd


def cp_buffer_bytes(plan: Plan, *, graph: ModelGraph, tok_bytes: float) -> float:
    """Transient CP buffers beside the activations (memory term "cp_buffers"): ring K,V blocks in
    hand and in flight (the backward also carries dK,dV: 4 blocks); the all-to-all's gathered
    q,k,v and output of the layer in progress."""
    if plan.dims.cp == 1:
        return 0.0
    head_dim = graph.hidden_size // graph.num_attention_heads
    u = plan.ulysses_degree()
    total = 0.0
    if plan.dims.cp // u > 1:
        total += 4 * 2 * tok_bytes * u * kv_heads_local(plan, graph=graph) * head_dim
    if u > 1:
        q_heads = graph.num_attention_heads // plan.dims.tp
        total += tok_bytes * (2 * q_heads + 2 * max(graph.num_key_value_heads // plan.dims.tp, u)) * head_dim
    return total
