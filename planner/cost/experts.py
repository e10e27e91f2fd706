"""Expert load: how many routed tokens the busiest EP rank handles, relative to the mean.

One number prices both halves of an MoE layer that placement and capacity change:
- the expert GEMMs: every EP rank waits for the busiest one, which runs `factor` x the mean
  rank's tokens (Split.imbalance in compute.py);
- the dispatch/combine all-to-all: it ends when the busiest receiver has its tokens, so it
  moves `factor` x the mean rank's bytes (comm._ep_s).

Where the factor comes from, most specific first:
1. a capacity factor cf (GShard, Lepikhin et al. 2020, Sec. 2.2; Switch Transformer, Fedus et
   al. 2021, Sec. 2.2): every expert gets a buffer of cf x tokens*top_k/E slots, padded when
   under-used and dropping the overflow, and the buffers are what the all-to-all moves and the
   GEMMs run on, so factor = cf whatever the placement;
2. dropless with a routing trace on the plan (Plan.expert_load, tokens per expert per MoE layer):
   each rank's tokens are the sum over the experts the placement puts on it (Plan.expert_placement,
   else contiguous blocks, as the executor runs it); factor = busiest / mean rank, averaged over
   the MoE layers (step time is a sum over layers);
3. dropless without a trace: DROPLESS_IMBALANCE, the busiest rank ~10% over the mean with an
   auxiliary balance loss (Switch Transformer Fig. 9; DeepSeek-V3 report Sec. 2.1.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from planner.graph import MoEStats
from planner.plan import Plan

DROPLESS_IMBALANCE = 1.10


def contiguous_placement(num_experts: int, ep: int) -> list[int]:
    """The executor's default: blocks of num_experts/ep experts per EP rank."""
    per_rank = num_experts // ep
    return [e // per_rank for e in range(num_experts)]


def rank_loads(placement: Sequence[int], expert_tokens: Sequence[float], *, ep: int) -> list[float]:
    """Tokens each EP rank receives in one MoE layer's dispatch: the sum of its experts' tokens."""
    loads = [0.0] * ep
    for rank, tokens in zip(placement, expert_tokens, strict=True):
        loads[rank] += float(tokens)
    return loads


def busiest_over_mean(loads: Sequence[float]) -> float:
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def layer_factors(plan: Plan) -> list[float]:
    """Busiest / mean EP rank per MoE layer of the plan's routing trace (empty without one)."""
    if plan.expert_load is None:
        return []
    ep = plan.dims.ep
    out = []
    for layer, tokens in enumerate(plan.expert_load):
        placement = (plan.expert_placement[layer] if plan.expert_placement is not None
                     else contiguous_placement(len(tokens), ep))
        out.append(busiest_over_mean(rank_loads(placement, tokens, ep=ep)))
    return out


def remote_nodes_hit(*, num_experts: int, top_k: int, nodes: int) -> float:
    """Expected number of other nodes one token's top-k experts live on, routing uniform.

    A token picks top_k distinct experts; with the experts spread evenly over `nodes` nodes
    (num_experts / nodes each), a given remote node holds none of them with the hypergeometric
    probability C(E - E/N, k) / C(E, k), so the expected count of remote nodes hit is
    (N - 1) (1 - C(E - E/N, k) / C(E, k)) (balls-into-bins without replacement). Uniform routing is
    what a force-balanced gate produces (Megatron-Core moe_router_force_load_balancing); a DeepEP-style
    dispatcher sends a token once to each of these nodes and forwards it over NVLink inside the node
    (deepseek-ai/DeepEP docs/legacy.md, "normal kernels"; its tests/legacy/test_internode.py counts
    the unique (token, node) pairs as the RDMA bytes behind the bandwidth table).
    Not modelled: NeMo AutoModel's FakeBalancedGate with noise 0 is round-robin, token t to experts
    k t .. k t + k - 1 mod E (nemo_automodel/components/moe/layers.py), so under contiguous placement
    a token reaches one node and ceil(k / experts per rank) ranks, not this uniform-routing count.
    Pricing that alone makes the AutoModel MoE rows 16-39% too fast (2026-12 check), so another
    cost of those runs is missing from the model; keep the uniform count until it is found.
    """
    if nodes <= 1:
        return 0.0
    per_node = num_experts / nodes
    k = min(top_k, num_experts)
    miss = math.comb(num_experts - round(per_node), k) / math.comb(num_experts, k)
    return (nodes - 1) * (1.0 - miss)


def load_factor(plan: Plan, moe: MoEStats | None) -> float:
    """Busiest EP rank's routed tokens / the mean rank's, for the GEMMs and the all-to-all."""
    if moe is None:
        return 1.0
    if moe.capacity_factor is not None:
        return moe.capacity_factor
    factors = layer_factors(plan)
    return sum(factors) / len(factors) if factors else DROPLESS_IMBALANCE
