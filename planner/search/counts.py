"""Why no layout exists for a GPU count, and the nearest counts that have one.

A layout splits the GPUs as dp x tp x pp x cp (planner.plan.problems has the rules): dp divides
the global batch, tp the attention heads, 2*cp the sequence, pp at most the layers. When the
count has a factor none of them can take (99,360 = 2^5 x 3 x ... x 23 GPUs for a 2,048-sequence
batch), the search has nothing to price; this module names that factor and scans whole nodes
below and above for counts that do factor.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from planner.plan import ParallelDims, Target, problems
from planner.scenario import Scenario

_SCAN_NODES = 1_000_000  # nodes scanned each way (cheap: a few set lookups per count)


def _allowed(target: Target, axis: str, limit: int) -> tuple[int, ...]:
    """Degrees one axis may take on its own, by the one copy of the rules."""
    out = []
    for k in range(1, limit + 1):
        dims = ParallelDims(**{axis: k})
        if not problems(dims, replace(target, world_size=k, num_experts=0)):
            out.append(k)
    return tuple(out)


@lru_cache(maxsize=16)
def _degrees(target: Target) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Allowed dp, tp and cp degrees (pp takes any degree up to the layers)."""
    return (_allowed(target, "dp", target.global_batch), _allowed(target, "tp", target.num_heads),
            _allowed(target, "cp", max(1, target.seq_len // 2)))


def _largest_split(n: int, target: Target) -> int:
    """The largest dp*tp*cp product dividing n (what is left must be pp)."""
    dps, tps, cps = _degrees(target)
    best = 1
    for tp in tps:
        if n % tp:
            continue
        for cp in cps:
            if (n // tp) % cp:
                continue
            for dp in dps:
                if (n // (tp * cp)) % dp == 0:
                    best = max(best, dp * tp * cp)
    return best


def has_layout(n: int, target: Target) -> bool:
    return n // _largest_split(n, target) <= target.num_layers


def gpu_count_advice(scenario: Scenario) -> str:
    """One line: the factor of the GPU count no axis takes, and the nearest counts that work."""
    target, world = scenario.plan_target(), scenario.cluster.world_size
    split = _largest_split(world, target)
    left = world // split
    why = (f"dp, tp and cp take at most {split:,} of the {world:,} GPUs (dp divides global_batch="
           f"{target.global_batch}, tp the {target.num_heads} heads, 2*cp the {target.seq_len}-token sequence), "
           f"leaving a factor {left:,} for pp, which cannot exceed num_hidden_layers={target.num_layers}")
    per_node = scenario.cluster.gpus_per_node
    nodes = scenario.cluster.num_nodes
    below = next((k * per_node for k in range(nodes - 1, max(0, nodes - _SCAN_NODES), -1)
                  if has_layout(k * per_node, target)), None)
    above = next((k * per_node for k in range(nodes + 1, nodes + _SCAN_NODES) if has_layout(k * per_node, target)),
                 None)
    near = [f"{n:,} GPUs ({n // per_node:,} nodes)" for n in (below, above) if n is not None]
    return f"nothing fits: no valid layout for {world:,} GPUs: {why}; nearest GPU counts that work: " + (
        " or ".join(near) if near else "none nearby")
