"""Expert-placement data and heuristics (numpy only): routing traces, the placement cost model,
round-robin, a greedy start, swap local search and a combinatorial lower bound.

Cost model (MoETuner, Go et al. 2025; ExFlow, Yao et al. 2024): a token routed to expert a in
MoE layer l and to expert b in layer l+1 travels from a's rank to b's rank: free on the same
rank, `intra_s_per_token` inside a node, `inter_s_per_token` across nodes. All ranks send at
once, so a layer pair costs its total traffic time / num_ranks. Each layer also waits for its
busiest rank: max_r (tokens on r) * compute_s_per_token. ilp_experts.place_experts refines the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.errors import UserError, expect_object, read_json


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingStats:
    """Token counts per MoE layer and expert, and consecutive-layer routing affinity."""

    expert_tokens: np.ndarray  # [L, E] tokens routed to each expert
    affinity: np.ndarray  # [L-1, E, E]: [l, a, b] tokens at expert a in layer l and b in l+1

    @property
    def num_layers(self) -> int:
        return int(self.expert_tokens.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.expert_tokens.shape[1])


def load_routing_trace(path: Path) -> RoutingStats:
    """Read a routing trace, or the executor's measurement.json that carries one under "routing".

    The format (README "Routing traces"; executor/routing.py writes it):
    {"num_experts": E, "layers": [{"layer": i, "expert_tokens": [E counts]}, ...],
     "affinity": [{"from_layer": i, "to_layer": j, "matrix": [[E x E counts]]}, ...]}
    with the layers listed in model order and affinity (optional) between consecutive listed layers.
    UserError names the file and the field.
    """
    raw = expect_object(read_json(path, what="routing trace", flag="--routing"), file=path, what="routing trace")
    if "routing" in raw and "layers" not in raw:  # the executor's measurement.json
        if raw["routing"] is None:
            raise UserError("the measurement has no routing trace (a dense model's run)", file=path,
                            fix="run an MoE plan with `planner run`, or pass a trace file")
        raw = expect_object(raw["routing"], file=path, what="routing trace")
    try:
        return _routing_stats(raw, path)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        if isinstance(err, UserError):
            raise
        detail = f"missing key {err.args[0]!r}" if isinstance(err, KeyError) else " ".join(str(err).split())[:160]
        raise UserError(f"malformed routing trace ({detail})", file=path,
                        fix="layers[] need layer and expert_tokens (num_experts numbers); affinity[] "
                            "from_layer, to_layer and an experts x experts matrix") from None


def _routing_stats(raw: dict, path: Path) -> RoutingStats:
    experts = int(raw.get("num_experts", 0))
    layers = raw.get("layers") or []
    if experts < 1 or not isinstance(layers, list) or not layers:
        raise UserError("needs num_experts >= 1 and a non-empty layers list", file=path)
    for k, entry in enumerate(layers):  # name the entry: a ragged list only says "not broadcastable"
        if not isinstance(entry, dict) or "expert_tokens" not in entry:
            raise UserError(f"layers[{k}]: missing key 'expert_tokens'", file=path,
                            fix=f"give each layer expert_tokens, num_experts={experts} counts")
        counts = entry["expert_tokens"]
        if not isinstance(counts, list) or len(counts) != experts:
            got = len(counts) if isinstance(counts, list) else "no list of"
            raise UserError(f"layers[{k}].expert_tokens has {got} entries but num_experts={experts}", file=path)
    tokens = np.array([entry["expert_tokens"] for entry in layers], dtype=float)
    if not np.isfinite(tokens).all() or (tokens < 0).any():
        raise UserError("layers[].expert_tokens must be finite, non-negative token counts", file=path)
    affinity = np.zeros((len(layers) - 1, experts, experts))
    order = {entry.get("layer", k): k for k, entry in enumerate(layers)}
    for n, pair in enumerate(raw.get("affinity", [])):
        k = order.get(pair["from_layer"])
        if k is None or order.get(pair["to_layer"]) != k + 1:
            raise UserError(f"affinity[{n}] from_layer/to_layer must name consecutive listed layers", file=path)
        matrix = np.asarray(pair["matrix"], dtype=float)
        if matrix.shape != (experts, experts):
            raise UserError(f"affinity[{n}].matrix is {'x'.join(map(str, matrix.shape)) or 'empty'} but "
                            f"num_experts={experts} needs {experts}x{experts}", file=path)
        if not np.isfinite(matrix).all() or (matrix < 0).any():
            raise UserError(f"affinity[{n}].matrix must hold finite, non-negative counts", file=path)
        affinity[k] = matrix
    return RoutingStats(expert_tokens=tokens, affinity=affinity)


def check_matches(routing: RoutingStats, *, num_layers: int, num_experts: int, path: Path | None = None) -> None:
    """UserError naming the mismatch when a trace was recorded on another model (the one copy of the rule)."""
    if routing.num_experts != num_experts or routing.num_layers != num_layers:
        raise UserError(f"the trace has {routing.num_layers} MoE layers x {routing.num_experts} experts but the "
                        f"model has {num_layers} MoE layers x {num_experts} experts", file=path, field="--routing",
                        fix="record the trace with `planner run` on this model")


def zipf_routing(*, num_layers: int, num_experts: int, tokens: int, top_k: int, skew: float = 1.2,
                 coherence: float = 0.6, seed: int = 0) -> RoutingStats:
    """A synthetic skewed trace: expert popularity ~ Zipf(skew) (shuffled per layer), and with
    probability `coherence` a token's next-layer expert follows a fixed per-expert successor map
    (the context coherence ExFlow measured); the rest is drawn from the popularity law."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_experts + 1) ** skew
    probs = [rng.permutation(popularity / popularity.sum()) for _ in range(num_layers)]
    successor = [rng.permutation(num_experts) for _ in range(num_layers)]
    picks = _draw(rng, probs[0], tokens * top_k)
    counts = np.zeros((num_layers, num_experts))
    affinity = np.zeros((num_layers - 1, num_experts, num_experts))
    counts[0] = np.bincount(picks, minlength=num_experts)
    for layer in range(1, num_layers):
        follow = rng.random(picks.size) < coherence
        nxt = np.where(follow, successor[layer][picks], _draw(rng, probs[layer], picks.size))
        counts[layer] = np.bincount(nxt, minlength=num_experts)
        pair = np.bincount(picks * num_experts + nxt, minlength=num_experts * num_experts)
        affinity[layer - 1] = pair.reshape(num_experts, num_experts)
        picks = nxt
    return RoutingStats(expert_tokens=counts, affinity=affinity)


def _draw(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    """Inverse-CDF sampling (much faster than Generator.choice with p= for large draws)."""
    return np.minimum(np.searchsorted(np.cumsum(probs), rng.random(size)), probs.size - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementCost:
    balance_s: float  # sum over layers of the busiest rank's expert time
    traffic_s: float  # sum over layer pairs of routed-token traffic time per rank

    @property
    def total_s(self) -> float:
        return self.balance_s + self.traffic_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    num_ranks: int
    ranks_per_node: int
    compute_s_per_token: float
    intra_s_per_token: float
    inter_s_per_token: float

    def link_cost(self) -> np.ndarray:
        """[R, R] seconds per token from rank i to rank j."""
        node = np.arange(self.num_ranks) // self.ranks_per_node
        same_node = node[:, None] == node[None, :]
        cost = np.where(same_node, self.intra_s_per_token, self.inter_s_per_token)
        np.fill_diagonal(cost, 0.0)
        return cost


def placement_cost(routing: RoutingStats, topo: Topology, ranks: np.ndarray) -> PlacementCost:
    """Cost of `ranks` ([L, E] rank of each expert) under the model in the module docstring."""
    loads = np.stack([np.bincount(ranks[l], weights=routing.expert_tokens[l], minlength=topo.num_ranks)
                      for l in range(routing.num_layers)])
    link = topo.link_cost()
    traffic = sum(float((routing.affinity[l] * link[ranks[l]][:, ranks[l + 1]]).sum())
                  for l in range(routing.num_layers - 1))
    return PlacementCost(balance_s=float(loads.max(axis=1).sum()) * topo.compute_s_per_token,
                         traffic_s=traffic / topo.num_ranks)


def round_robin(num_layers: int, num_experts: int, num_ranks: int) -> np.ndarray:
    return np.tile(np.arange(num_experts) % num_ranks, (num_layers, 1))


def neighbour_cost(routing: RoutingStats, topo: Topology, ranks: np.ndarray, layer: int) -> np.ndarray:
    """[E, R] traffic seconds of putting each expert of `layer` on each rank, neighbours fixed."""
    link = topo.link_cost() / topo.num_ranks
    cost = np.zeros((routing.num_experts, topo.num_ranks))
    if layer > 0:  # tokens arriving from layer-1 experts: sum_a A[a, b] * link[rank(a), r]
        cost += routing.affinity[layer - 1].T @ link[ranks[layer - 1]]
    if layer + 1 < routing.num_layers:  # tokens leaving to layer+1 experts
        cost += routing.affinity[layer] @ link[:, ranks[layer + 1]].T
    return cost


def greedy(routing: RoutingStats, topo: Topology) -> np.ndarray:
    """Layer by layer, heaviest expert first, onto the rank with the least traffic + load cost."""
    experts, num_ranks = routing.num_experts, topo.num_ranks
    cap = experts // num_ranks
    ranks = round_robin(routing.num_layers, experts, num_ranks)
    for layer in range(routing.num_layers):
        traffic = neighbour_cost(routing, topo, ranks, layer) if layer else np.zeros((experts, num_ranks))
        load, used = np.zeros(num_ranks), np.zeros(num_ranks, dtype=int)
        tokens = routing.expert_tokens[layer]
        for e in np.argsort(-tokens):
            grow = np.maximum(load + tokens[e] - load.max(), 0.0) * topo.compute_s_per_token
            score = np.where(used < cap, traffic[e] + grow + 1e-12 * load, np.inf)
            r = int(score.argmin())
            ranks[layer, e], load[r], used[r] = r, load[r] + tokens[e], used[r] + 1
        if layer + 1 < routing.num_layers:
            ranks[layer + 1] = ranks[layer][np.argmax(routing.affinity[layer], axis=0)]  # provisional
    return ranks


def local_search(routing: RoutingStats, topo: Topology, ranks: np.ndarray, *, max_sweeps: int = 20,
                 swaps_per_layer: int | None = None, max_evaluations: int | None = None,
                 deadline: float = float("inf")) -> np.ndarray:
    """Best-improvement swaps of experts of one layer on different ranks (_best_swap), sweeping the
    layers until none improves. `swaps_per_layer` caps one sweep's evaluations per layer (the
    first swaps gain most, so a cap spreads a budget over all layers) and `max_evaluations` the
    total: a result that does not depend on the machine's speed. `deadline` is only a safety net."""
    import time

    ranks = ranks.copy()
    per_layer = routing.num_experts // 2 if swaps_per_layer is None else swaps_per_layer
    left = float("inf") if max_evaluations is None else max_evaluations
    for _ in range(max_sweeps):
        improved = False
        for layer in range(routing.num_layers):
            for _ in range(per_layer):
                if left <= 0 or time.perf_counter() > deadline:
                    return ranks
                left -= 1
                if not _best_swap(routing, topo, ranks, layer):
                    break
                improved = True
        if not improved:
            break
    return ranks


def _best_swap(routing: RoutingStats, topo: Topology, ranks: np.ndarray, layer: int) -> bool:
    """Apply the best swap, plus the best swap of every other rank pair that shares no rank with a
    better one (a greedy matching of rank pairs: at most ranks/2 swaps from one evaluation of the
    [E, E] delta). Swaps on disjoint ranks change disjoint loads and, with the neighbour layers
    fixed, independent traffic, so only the busiest-rank term can interact; the batch is kept
    when the layer's exact cost drops by at least the best single swap's gain, else only that one."""
    cost = neighbour_cost(routing, topo, ranks, layer)
    own, tokens = ranks[layer], routing.expert_tokens[layer]
    num_r = topo.num_ranks
    cap = own.size // num_r  # every rank holds cap experts: group them, [R, cap] per rank
    by_rank = np.argsort(own, kind="stable")
    c = cost[by_rank].reshape(num_r, cap, num_r)  # c[q, i, r]: i-th expert of rank q on rank r
    t = tokens[by_rank].reshape(num_r, cap)
    here = c[np.arange(num_r), :, np.arange(num_r)]  # [R, cap]
    load = t.sum(axis=1)
    # swapping a = (qa, i) and b = (qb, j), qa < qb: traffic c[qa,i,qb] + c[qb,j,qa] - here[a] -
    # here[b]; qa gains t_b - t_a, qb loses it, the other ranks keep their loads. [pair, i, j]
    qa, qb = np.triu_indices(num_r, 1)
    shift = t[qb][:, None, :] - t[qa][:, :, None]
    delta = ((c[qa, :, qb] - here[qa])[:, :, None] + (c[qb, :, qa] - here[qb])[:, None, :])
    new_max = np.maximum(_max_excluding(load)[qa, qb][:, None, None],
                         np.maximum(load[qa][:, None, None] + shift, load[qb][:, None, None] - shift))
    delta += (new_max - load.max()) * topo.compute_s_per_token
    flat = delta.reshape(qa.size, cap * cap)
    where = flat.argmin(axis=1)
    best = flat[np.arange(qa.size), where]  # the best swap of each rank pair
    tol = -1e-12 * max(1.0, abs(load.max()))
    if best.min() >= tol:
        return False
    chosen, used = [], set()
    for k in np.argsort(best, kind="stable"):
        if best[k] >= tol:
            break
        if qa[k] in used or qb[k] in used:
            continue
        used |= {int(qa[k]), int(qb[k])}
        i, j = divmod(int(where[k]), cap)
        chosen.append((int(by_rank[qa[k] * cap + i]), int(by_rank[qb[k] * cap + j])))
    gain = -float(best.min())
    before = _layer_objective(routing, topo, cost, own, tokens)
    trial = own.copy()
    for a, b in chosen:
        trial[a], trial[b] = own[b], own[a]
    if len(chosen) > 1 and before - _layer_objective(routing, topo, cost, trial, tokens) >= gain:
        ranks[layer] = trial
        return True
    a, b = chosen[0]
    ranks[layer, a], ranks[layer, b] = own[b], own[a]
    return True


def _layer_objective(routing: RoutingStats, topo: Topology, cost: np.ndarray, own: np.ndarray,
                     tokens: np.ndarray) -> float:
    """Traffic to the fixed neighbour layers plus the busiest rank's compute, for one layer."""
    load = np.bincount(own, weights=tokens, minlength=topo.num_ranks).max()
    return float(cost[np.arange(own.size), own].sum() + load * topo.compute_s_per_token)


def _max_excluding(load: np.ndarray) -> np.ndarray:
    """[R, R]: the largest load over the ranks other than q and r."""
    num_r = load.size
    masked = np.broadcast_to(load, (num_r, num_r, num_r)).copy()
    idx = np.arange(num_r)
    masked[idx, :, idx] = -np.inf
    masked[:, idx, idx] = -np.inf
    return masked.max(axis=2) if num_r > 2 else np.zeros((num_r, num_r))


def lower_bound(routing: RoutingStats, topo: Topology) -> PlacementCost:
    """A valid bound: busiest rank >= max(mean load, heaviest expert); a rank holds cap experts
    of the next layer, so at least rowsum - top_cap(A[a]) of expert a's tokens change rank, and
    at least rowsum - top_(cap * ranks_per_node) change node."""
    cap = routing.num_experts // topo.num_ranks
    tokens = routing.expert_tokens
    balance = np.maximum(tokens.sum(axis=1) / topo.num_ranks, tokens.max(axis=1)).sum()
    traffic = 0.0
    for matrix in routing.affinity:
        ordered = -np.sort(-matrix, axis=1)
        rows = matrix.sum(axis=1)
        leave_rank = rows - ordered[:, :cap].sum(axis=1)
        leave_node = rows - ordered[:, :min(cap * topo.ranks_per_node, routing.num_experts)].sum(axis=1)
        traffic += topo.intra_s_per_token * leave_rank.sum() + (
            topo.inter_s_per_token - topo.intra_s_per_token) * leave_node.sum()
    return PlacementCost(balance_s=float(balance) * topo.compute_s_per_token,
                         traffic_s=float(traffic) / topo.num_ranks)
