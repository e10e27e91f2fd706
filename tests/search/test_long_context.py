"""Long context and memory in the search: the CP kind each case should get, offload only when
nothing else fits, vocabulary parallelism offered for pipelined layouts (real cost model)."""

from __future__ import annotations

from pathlib import Path

from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import CpKind, Fp8Recipe, OffloadState, ParallelDims
from planner.scenario import (BalancePolicy, JobSpec, Scenario, SearchSpace, cluster_preset, load_scenario,
                              model_preset)
from planner.search import search
from planner.search import space as ss


def _scenario(model: str, *, nodes: int, seq: int, gbs: int, gpus_per_node: int = 8, **space) -> Scenario:
    spec = model_preset(model).model_copy(update={"max_position_embeddings": max(seq, 8192)})
    cluster = cluster_preset("dgx-h100", num_nodes=nodes).model_copy(update={"gpus_per_node": gpus_per_node})
    return Scenario(name="t", model=spec, cluster=cluster,
                    job=JobSpec(seq_len=seq, global_batch=gbs), search=SearchSpace(**space))


def _best(scenario: Scenario):
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len)
    return search(graph, scenario, hw=datasheet_profile(scenario.cluster))


def test_more_heads_than_cp_ranks_inside_a_node_picks_all_to_all():
    # Llama-2 7B: 32 heads (MHA) over cp=8 on one NVLink node: Ulysses' all-to-alls are small on
    # NVLink and its attention runs as one call; the ring's K,V (all 32 heads) cannot hide.
    result = _best(_scenario("llama2-7b", nodes=1, seq=32768, gbs=8, fixed={"cp": 8}))
    assert result.best.plan.dims.cp == 8
    assert result.best.plan.cp_kind == CpKind.ALL_TO_ALL


def test_long_sequence_across_nodes_picks_a_ring():
    # 128k tokens, TP 8 inside each node and CP 4 across 4 nodes (Megatron's layout): Ulysses'
    # all-to-all crosses the NICs and blocks; the ring's K,V steps hide behind 16k-token attention
    # blocks long enough for the flash kernel's full rate (cost/kernels.flash_rate).
    plain = _best(_scenario("llama3-8b", nodes=4, seq=131072, gbs=4, fixed={"cp": 4, "tp": 8},
                            cp_kinds=["ring", "all-to-all"]))
    assert plain.best.plan.cp_kind == CpKind.RING
    # with every kind allowed it stays a ring: TP fills the node, so a hybrid's all-to-all would
    # cross the NICs too
    every = _best(_scenario("llama3-8b", nodes=4, seq=131072, gbs=4, fixed={"cp": 4, "tp": 8}))
    assert every.best.plan.cp_kind in (CpKind.RING, CpKind.RING_BIDIRECTIONAL)
    assert every.best.estimate.step_time_s <= plain.best.estimate.step_time_s


def test_ulysses_needs_local_heads_divisible_by_cp():
    scenario = _scenario("llama3-8b", nodes=8, seq=131072, gbs=4)
    kinds = {k for k, _ in ss.cp_options(scenario, ParallelDims(cp=64))}
    assert CpKind.ALL_TO_ALL not in kinds  # 32 heads over 64 ranks
    assert CpKind.HYBRID in kinds and CpKind.RING in kinds
    assert CpKind.ALL_TO_ALL in {k for k, _ in ss.cp_options(scenario, ParallelDims(cp=32, dp=2))}
    assert CpKind.ALL_TO_ALL not in {k for k, _ in ss.cp_options(scenario, ParallelDims(cp=8, tp=8))}  # 4 local heads


def test_offload_only_when_nothing_else_fits():
    # Llama-3 8B on one H100: 2+4+12 bytes/param of model states (~134 GiB) cannot fit 80 GB; with
    # the optimizer (and gradients) on the host it does.
    alone = _best(_scenario("llama3-8b", nodes=1, seq=4096, gbs=8, gpus_per_node=1))
    assert alone.best is not None and OffloadState.OPTIMIZER in alone.best.plan.offload
    assert alone.best.estimate.offloaded_bytes["host"] > 64 * 2**30
    assert all(c.plan.offload for c in alone.candidates if c.fits)
    s = alone.stats  # the offload pass revisits the layouts: they are enumerated once, its plans are extra
    assert s.layouts == 1 and s.enumerated == s.invalid + s.pruned + (s.costed - s.tuned)
    # eight GPUs fit without it: no candidate is even priced with offload
    node = _best(_scenario("llama3-8b", nodes=1, seq=4096, gbs=8))
    assert node.best is not None and not node.best.plan.offload
    assert not any(c.plan.offload for c in node.candidates)


def test_vocab_parallel_is_searched_for_pipelined_layouts():
    # opt-in (like zero-bubble): the executor runs vocab parallelism under gpipe with tp=cp=1 only
    result = _best(_scenario("llama3-8b", nodes=1, seq=4096, gbs=32, fixed={"pp": 4, "tp": 2, "cp": 1},
                             vocab_parallel=[False, True]))
    priced = [c for c in result.candidates if c.estimate is not None and c.plan.dims.pp == 4]
    assert any(c.plan.vocab_parallel for c in priced)
    assert "vocab-parallel" in next(c for c in priced if c.plan.vocab_parallel).plan.describe()


def test_fp8_recipes_are_searched():
    scenario = _scenario("llama3-8b", nodes=1, seq=4096, gbs=16).model_copy(
        update={"job": JobSpec(seq_len=4096, global_batch=16, precision="fp8")})
    result = _best(scenario)
    assert result.best.plan.fp8_recipe is not None and "fp8-" in result.best.plan.describe()
    priced = {c.plan.fp8_recipe for c in result.candidates if c.estimate is not None}
    assert priced == set(Fp8Recipe)


def test_balance_policy_is_searched_on_the_long_document_scenario():
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "llama3-8b-longdocs_h100x64.toml")
    unbalanced = sc.model_copy(update={"job": sc.job.model_copy(update={
        "sequences": sc.job.sequences.model_copy(update={"balance": BalancePolicy.NONE})})})
    result = _best(unbalanced)
    assert result.best.plan.balance == BalancePolicy.SORT_AND_PACK
    assert {c.plan.balance for c in result.candidates if c.estimate is not None} == set(BalancePolicy)
    same_plan = [c for c in result.candidates if c.estimate is not None and c.plan.model_copy(
        update={"balance": None}) == result.best.plan.model_copy(update={"balance": None})]
    assert max(c.estimate.step_time_s for c in same_plan) > result.best.estimate.step_time_s * 1.02
