"""ILPs against brute force on random small instances (Alpa-style random cost tables)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from planner.search.ilp import routing as ex
from planner.search.ilp import SolveStatus, StagePartitionProblem, partition_stages
from planner.search.ilp import ExpertPlacementProblem, place_experts
from planner.search.ilp import DeviceMappingProblem, map_devices


def _compositions(n: int, parts: int):
    for cuts in itertools.combinations(range(1, n), parts - 1):
        yield np.diff([0, *cuts, n]).tolist()


def _random_partition(rng: np.random.Generator, *, pp: int, vp: int) -> StagePartitionProblem:
    n = int(rng.integers(pp * vp, pp * vp + 5))
    static = rng.uniform(1, 4, n)
    act = rng.uniform(0, 2, n)
    inflight = tuple(float(pp - r) for r in range(pp))
    limit = float((static.sum() + act.sum() * pp) / pp * rng.uniform(1.2, 2.5))
    return StagePartitionProblem(layer_time_s=tuple(rng.uniform(0.5, 3, n)), layer_static_bytes=tuple(static),
                                 layer_activation_bytes=tuple(act), num_ranks=pp, virtual_stages=vp,
                                 num_micro_batches=int(rng.integers(1, 8)), rank_inflight=inflight,
                                 memory_limit_bytes=limit)


@pytest.mark.parametrize(("pp", "vp"), [(2, 1), (3, 1), (4, 1), (2, 2), (3, 2)])
def test_stage_partition_equals_brute_force(pp: int, vp: int) -> None:
    rng = np.random.default_rng(pp * 10 + vp)
    for _ in range(4):
        problem = _random_partition(rng, pp=pp, vp=vp)
        n = len(problem.layer_time_s)
        feasible = [problem.evaluate(c)[0] for c in _compositions(n, problem.num_chunks)
                    if max(problem.evaluate(c)[2]) <= problem.memory_limit_bytes]
        result = partition_stages(problem)
        if not feasible:
            assert result is None
            continue
        assert result is not None and result.solve.status == SolveStatus.OPTIMAL
        assert result.step_time_s == pytest.approx(min(feasible), rel=1e-6)
        assert max(result.rank_memory_bytes) <= problem.memory_limit_bytes * (1 + 1e-9)
        assert sum(result.layers_per_chunk) == n and min(result.layers_per_chunk) >= 1


def _brute_force_step(problem: StagePartitionProblem) -> float | None:
    n, chunks = len(problem.layer_time_s), problem.num_chunks
    home = np.repeat(np.arange(chunks), [n // chunks + (c < n % chunks) for c in range(chunks)])
    best = None
    for counts in _compositions(n, chunks):
        chunk_of = np.repeat(np.arange(chunks), counts)
        if problem.window is not None and np.any(np.abs(chunk_of - home) > problem.window):
            continue
        step, _, memory = problem.evaluate(counts)
        if max(memory) <= problem.memory_limit_bytes and (best is None or step < best):
            best = step
    return best


@pytest.mark.parametrize(("pp", "vp", "window"), [(2, 2, None), (3, 2, None), (3, 2, 1), (4, 1, 1), (2, 3, 2)])
def test_block_runs_partition_equals_brute_force(pp: int, vp: int, window: int | None) -> None:
    """A transformer's layer list (embedding, equal blocks, a heavy head), which the ILP counts per
    run, under a binding memory limit and the search's window: the proven optimum is brute force's."""
    n_blocks = 14
    times = (0.3,) + (1.0,) * n_blocks + (2.5,)
    static = (4.0,) + (2.0,) * n_blocks + (4.0,)
    act = (0.2,) + (1.0,) * n_blocks + (1.5,)
    inflight = tuple(float(pp - r) for r in range(pp))
    for scale in (1.0, 0.6, 0.45):
        limit = (sum(static) + sum(act) * pp) / pp * 1.6 * scale
        problem = StagePartitionProblem(layer_time_s=times, layer_static_bytes=static, layer_activation_bytes=act,
                                        num_ranks=pp, virtual_stages=vp, num_micro_batches=2 * pp,
                                        rank_inflight=inflight, memory_limit_bytes=limit, window=window)
        expected = _brute_force_step(problem)
        result = partition_stages(problem)
        if expected is None:
            assert result is None
            continue
        assert result is not None and result.solve.status == SolveStatus.OPTIMAL
        assert result.step_time_s == pytest.approx(expected, rel=1e-6)
        assert max(result.rank_memory_bytes) <= limit * (1 + 1e-9)


def test_uneven_partition_fixes_the_vocabulary_imbalance() -> None:
    """128 blocks + a heavy LM head on 16 stages: the last stage gets fewer blocks, optimally."""
    times = (0.2,) + (1.0,) * 128 + (4.0,)
    problem = StagePartitionProblem(layer_time_s=times, layer_static_bytes=(1.0,) * 130,
                                    layer_activation_bytes=(0.0,) * 130, num_ranks=16,
                                    rank_inflight=(1.0,) * 16, memory_limit_bytes=1e9)
    result = partition_stages(problem)
    assert result is not None and result.solve.status == SolveStatus.OPTIMAL and result.solve.gap == 0
    assert result.slowest_rank_s == pytest.approx(9.0)  # even split would be 8 blocks + head = 12
    assert result.layers_per_chunk[-1] < result.layers_per_chunk[1]


def test_partition_none_when_nothing_fits() -> None:
    problem = StagePartitionProblem(layer_time_s=(1.0,) * 6, layer_static_bytes=(10.0,) * 6,
                                    layer_activation_bytes=(0.0,) * 6, num_ranks=2,
                                    rank_inflight=(2.0, 1.0), memory_limit_bytes=15.0)
    assert partition_stages(problem) is None


def _brute_force_placement(routing: ex.RoutingStats, topo: ex.Topology) -> float:
    experts, ranks = routing.num_experts, topo.num_ranks
    cap = experts // ranks
    layer_options = [np.array(p) for p in set(itertools.permutations(np.repeat(np.arange(ranks), cap)))]
    best = np.inf
    for combo in itertools.product(layer_options, repeat=routing.num_layers):
        best = min(best, ex.placement_cost(routing, topo, np.stack(combo)).total_s)
    return best


@pytest.mark.parametrize(("experts", "ranks", "layers", "per_node"), [(4, 2, 2, 1), (4, 2, 3, 1), (6, 3, 2, 3), (4, 4, 2, 2)])
def test_expert_placement_equals_brute_force(experts: int, ranks: int, layers: int, per_node: int) -> None:
    for seed in range(2):
        routing = ex.zipf_routing(num_layers=layers, num_experts=experts, tokens=60, top_k=1, seed=seed)
        topo = ex.Topology(num_ranks=ranks, ranks_per_node=per_node, compute_s_per_token=1e-3,
                           intra_s_per_token=1e-3, inter_s_per_token=3e-3)
        result = place_experts(ExpertPlacementProblem(routing=routing, topology=topo), time_limit_s=20)
        assert result.method == "exact-ilp" and result.solve.status == SolveStatus.OPTIMAL
        assert result.cost.total_s == pytest.approx(_brute_force_placement(routing, topo), rel=1e-6)
        counts = [np.bincount(layer, minlength=ranks).tolist() for layer in result.ranks]
        assert all(c == [experts // ranks] * ranks for c in counts)


def test_skewed_trace_placement_beats_round_robin_with_a_reported_gap() -> None:
    routing = ex.zipf_routing(num_layers=8, num_experts=64, tokens=4096, top_k=4, skew=1.2, seed=3)
    topo = ex.Topology(num_ranks=16, ranks_per_node=4, compute_s_per_token=2e-6,
                       intra_s_per_token=3e-8, inter_s_per_token=3e-7)
    result = place_experts(ExpertPlacementProblem(routing=routing, topology=topo), time_limit_s=2.0)
    assert result.method == "local-search+layer-ilp"
    assert result.cost.total_s <= 0.95 * result.round_robin.total_s
    assert result.all_to_all_saved_s >= 0.3 * result.round_robin.traffic_s
    assert 0.0 <= result.solve.gap < 0.5
    assert result.solve.bound <= result.cost.total_s
    lower = ex.lower_bound(routing, topo).total_s
    assert lower <= result.cost.total_s


def _best_single_swap_gain(routing: ex.RoutingStats, topo: ex.Topology, ranks: np.ndarray) -> float:
    """Brute force: the largest cost drop of swapping two experts of one layer on different ranks."""
    base, best = ex.placement_cost(routing, topo, ranks).total_s, 0.0
    for layer in range(routing.num_layers):
        for a, b in itertools.combinations(range(routing.num_experts), 2):
            if ranks[layer, a] != ranks[layer, b]:
                trial = ranks.copy()
                trial[layer, [a, b]] = trial[layer, [b, a]]
                best = max(best, base - ex.placement_cost(routing, topo, trial).total_s)
    return best


@pytest.mark.parametrize(("ranks", "per_node"), [(2, 1), (4, 2), (8, 4)])
def test_local_search_steps_descend_to_a_swap_local_optimum(ranks: int, per_node: int) -> None:
    """Each step (the best swap per disjoint rank pair, batched) lowers the exact cost; at the end
    no single swap of any layer improves it (checked by brute force over all swaps)."""
    routing = ex.zipf_routing(num_layers=3, num_experts=16, tokens=800, top_k=2, skew=1.1, seed=ranks)
    topo = ex.Topology(num_ranks=ranks, ranks_per_node=per_node, compute_s_per_token=2e-6,
                       intra_s_per_token=3e-7, inter_s_per_token=2e-6)
    current = ex.greedy(routing, topo)
    for _ in range(200):
        before = ex.placement_cost(routing, topo, current).total_s
        moved = [ex._best_swap(routing, topo, current, layer) for layer in range(routing.num_layers)]
        assert ex.placement_cost(routing, topo, current).total_s <= before + 1e-12
        if not any(moved):
            break
    assert not any(moved)
    assert _best_single_swap_gain(routing, topo, current) <= 1e-9 * ex.placement_cost(routing, topo, current).total_s
    assert all(np.bincount(layer, minlength=ranks).tolist() == [16 // ranks] * ranks for layer in current)


def test_routing_trace_round_trip(tmp_path) -> None:
    routing = ex.zipf_routing(num_layers=3, num_experts=4, tokens=50, top_k=2, seed=0)
    trace = {"num_experts": 4,
             "layers": [{"layer": 2 * i + 1, "expert_tokens": routing.expert_tokens[i].astype(int).tolist()}
                        for i in range(3)],
             "affinity": [{"from_layer": 2 * i + 1, "to_layer": 2 * i + 3,
                           "matrix": routing.affinity[i].astype(int).tolist()} for i in range(2)]}
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(trace))
    loaded = ex.load_routing_trace(path)
    assert np.array_equal(loaded.expert_tokens, routing.expert_tokens)
    assert np.array_equal(loaded.affinity, routing.affinity)
    trace["affinity"][0]["to_layer"] = 9
    path.write_text(json.dumps(trace))
    with pytest.raises(ValueError, match="consecutive"):
        ex.load_routing_trace(path)


def _random_mapping(rng: np.random.Generator, n: int) -> DeviceMappingProblem:
    nic = tuple(float(rng.choice([12.5, 25.0, 50.0])) for _ in range(n))
    pairs = {(int(a), int(b)): float(rng.choice([5.0, 100.0]))
             for a, b in [rng.choice(n, 2, replace=False) for _ in range(2)]}
    edges = tuple((u, u + 1, float(rng.uniform(1e9, 8e9))) for u in range(n - 1))
    return DeviceMappingProblem(node_bytes=tuple(rng.uniform(1e9, 6e9, n)), edges=edges, nic_gbs=nic, pair_gbs=pairs)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_device_mapping_equals_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(3):
        problem = _random_mapping(rng, n)
        best = min(problem.evaluate(list(p)) for p in itertools.permutations(range(n)))
        result = map_devices(problem)
        assert result.solve.status == SolveStatus.OPTIMAL
        assert result.slowest_link_s == pytest.approx(best, rel=1e-6)
        assert sorted(result.node_of) == list(range(n))
        assert result.slowest_link_s <= result.identity_s + 1e-12
