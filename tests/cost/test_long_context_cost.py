"""Cost model of the long-context and memory mechanisms: CP kinds, documents and balance,
offload, vocabulary parallelism (invariants and the Llama-3 8B long-document scenario)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from planner.cost import MemoryTerm, TimeTerm, estimate, plan_placement
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan, check
from planner.scenario import BalancePolicy, JobSpec, Scenario, cluster_preset, load_scenario, model_preset
from planner.scenario.sequences import assign_rows, attention_pairs, step_rows

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def _price(model: str, plan: dict, *, nodes: int = 1, seq: int = 4096, gbs: int = 8, job: JobSpec | None = None,
           cluster: str = "dgx-h100"):
    spec = model_preset(model).model_copy(update={"max_position_embeddings": max(seq, 8192)})
    cl = cluster_preset(cluster, num_nodes=nodes)
    job = job or JobSpec(seq_len=seq, global_batch=gbs)
    graph = extract_graph(spec, seq_len=job.seq_len)
    return estimate(graph, Plan.model_validate(plan), hw=datasheet_profile(cl), cluster=cl, job=job)


def test_cp_kinds_price_their_traffic_and_buffers():
    base = {"dims": {"cp": 8}, "recompute": "full", "zero_stage": 1}
    ring = _price("llama2-7b", base | {"cp_kind": "ring"}, seq=32768)
    bidir = _price("llama2-7b", base | {"cp_kind": "ring-bidirectional"}, seq=32768)
    ulysses = _price("llama2-7b", base | {"cp_kind": "all-to-all"}, seq=32768)
    assert bidir.time_breakdown_s[TimeTerm.CP] < ring.time_breakdown_s[TimeTerm.CP]  # half the block each way
    assert ulysses.time_breakdown_s[TimeTerm.CP] < ring.time_breakdown_s[TimeTerm.CP]  # 1/cp of the ring's bytes
    for e in (ring, bidir, ulysses):
        assert all(terms[MemoryTerm.CP_BUFFERS] > 0 for terms in e.stage_memory)
    with pytest.raises(ValueError, match="cp_a2a"):
        Plan.model_validate(base | {"cp_kind": "hybrid"})  # a hybrid needs its all-to-all degree
    hybrid = _price("llama3-8b", {"dims": {"cp": 32}, "cp_kind": "hybrid", "cp_a2a": 8, "recompute": "full"},
                    nodes=4, seq=131072, gbs=1)
    assert hybrid.step_time_s > 0



def test_hybrid_cp_groups_follow_the_device_mapping():
    """Hybrid CP's all-to-all runs over consecutive CP ranks, its ring over every cp_a2a-th one, on
    the GPUs the plan's device mapping gives them: on the identity mapping the all-to-all stays
    in the node; a mapping that alternates logical ranks between the two nodes swaps the tiers."""
    cl = cluster_preset("dgx-h100", num_nodes=2)
    base = {"dims": {"cp": 16}, "cp_kind": "hybrid", "cp_a2a": 8, "recompute": "full"}
    alternating = [(r % 2, r // 2) for r in range(16)]
    spans = [plan_placement(Plan.model_validate(base | m), cl).stages[0] for m in ({}, {"device_mapping": alternating})]
    assert (spans[0].cp_a2a.num_ranks, spans[0].cp_a2a.ranks_per_domain) == (8, 8)  # one node
    assert (spans[0].cp_ring.num_ranks, spans[0].cp_ring.ranks_per_domain) == (2, 1)  # across the nodes
    assert (spans[1].cp_a2a.ranks_per_domain, spans[1].cp_ring.ranks_per_domain) == (4, 2)
    local, scattered = (_price("llama3-8b", base | m, nodes=2, seq=65536, gbs=1)
                        for m in ({}, {"device_mapping": alternating}))
    assert local.step_time_s < scattered.step_time_s

def test_offload_moves_states_to_the_host_and_prices_the_transfers():
    plain = _price("llama3-8b", {"dims": {"dp": 8}, "zero_stage": 1, "recompute": "full"})
    moved = _price("llama3-8b", {"dims": {"dp": 8}, "zero_stage": 1, "recompute": "full",
                                 "offload": {"optimizer": "host", "gradients": "host"}})
    gpu, host = plain.stage_memory[0], moved.stage_memory[0]
    assert host[MemoryTerm.OPTIMIZER] == 0 and host[MemoryTerm.GRADIENTS] == 0
    assert host[MemoryTerm.OFFLOAD_STAGING] > 0
    assert moved.offloaded_bytes["host"] == pytest.approx(gpu[MemoryTerm.OPTIMIZER] + gpu[MemoryTerm.GRADIENTS])
    assert moved.peak_memory_bytes < plain.peak_memory_bytes
    assert moved.time_breakdown_s[TimeTerm.OPTIMIZER] > plain.time_breakdown_s[TimeTerm.OPTIMIZER]  # CPU Adam + PCIe
    # Grace's NVLink-C2C moves the same bytes faster than PCIe gen5
    c2c = _price("llama3-8b", {"dims": {"dp": 4}, "zero_stage": 1, "recompute": "full",
                               "offload": {"optimizer": "host"}}, cluster="gb200-nvl72")
    pcie = _price("llama3-8b", {"dims": {"dp": 8}, "zero_stage": 1, "recompute": "full", "offload": {"optimizer": "host"}})
    assert c2c.time_breakdown_s[TimeTerm.OPTIMIZER] < pcie.time_breakdown_s[TimeTerm.OPTIMIZER]
    streamed = _price("llama3-8b", {"dims": {"dp": 8}, "recompute": "full",
                                    "offload": {"parameters": "host", "activations": "host"}})
    assert streamed.time_breakdown_s[TimeTerm.OFFLOAD] > 0
    assert streamed.stage_memory[0][MemoryTerm.WEIGHTS] == 0


def test_vocab_parallel_spreads_embedding_and_head_over_stages():
    plan = {"dims": {"pp": 4, "dp": 2}, "micro_batch_size": 1, "zero_stage": 1, "recompute": "full"}
    plain = _price("llama3-8b", plan, gbs=32)
    vocab = _price("llama3-8b", plan | {"vocab_parallel": True}, gbs=32)
    first, last = (sum(plain.stage_memory[s].values()) for s in (0, 3))
    spread = [sum(t.values()) for t in vocab.stage_memory]
    assert max(spread) < max(first, last)  # the 128k-row embedding and head no longer sit on the ends
    assert max(spread) - min(spread) < abs(last - sum(plain.stage_memory[1].values()))
    assert vocab.time_breakdown_s[TimeTerm.VOCAB] > 0 and plain.time_breakdown_s[TimeTerm.VOCAB] == 0


def test_packing_and_balance_rules():
    sc = load_scenario(REPO / "scenarios" / "llama3-8b-longdocs_h100x64.toml")
    rows = step_rows(sc.job.sequences, seq_len=sc.job.seq_len, global_batch=sc.job.global_batch, step=0)
    assert len(rows) == sc.job.global_batch and all(sum(r) == sc.job.seq_len for r in rows)
    for policy in BalancePolicy:
        loads = assign_rows(rows, ranks=64, policy=policy)
        assert sorted(i for share in loads.rows for i in share) == list(range(len(rows)))
        assert set(loads.tokens) == {4 * sc.job.seq_len}
        assert sum(loads.pairs) == pytest.approx(sum(attention_pairs(r) for r in rows))
    none, packed = (assign_rows(rows, ranks=64, policy=p) for p in (BalancePolicy.NONE, BalancePolicy.SORT_AND_PACK))
    assert max(packed.pairs) < max(none.pairs)


def test_llama3_8b_long_documents_balancing_gain():
    """The scenario's long-tailed mix: balancing rows over the 64 data-parallel ranks is priced faster."""
    sc = load_scenario(REPO / "scenarios" / "llama3-8b-longdocs_h100x64.toml")
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    hw = datasheet_profile(sc.cluster)
    plan = Plan.model_validate({"dims": {"dp": 64}, "micro_batch_size": 1, "zero_stage": 1, "recompute": "full"})

    def price(balance: BalancePolicy | None):
        job = sc.job.model_copy(update={"sequences": None if balance is None else
                                        sc.job.sequences.model_copy(update={"balance": balance})})
        return estimate(graph, plan, hw=hw, cluster=sc.cluster, job=job)

    full, none, packed = price(None), price(BalancePolicy.NONE), price(BalancePolicy.SORT_AND_PACK)
    assert none.notes["attention_factor"] < 0.9  # document masking skips cross-document pairs
    assert none.notes["dp_imbalance"] > 1.2 > 1.05 > packed.notes["dp_imbalance"]
    gain = none.step_time_s / packed.step_time_s - 1
    assert gain > 0.03, gain  # measured: ~4.6% faster step on this mix
    assert packed.step_time_s < full.step_time_s


def test_fp8_recipes_keep_attention_in_bf16_and_add_scaling_work():
    job = JobSpec(seq_len=8192, global_batch=8, precision="fp8")
    plan = {"dims": {"dp": 8}, "zero_stage": 1, "recompute": "full"}
    # no recipe: the kernel model's FP8 linears (tensor-wise current scaling casts, attention 16-bit)
    # with 1-byte weights and collectives; a recipe keeps weights and collectives in bf16
    legacy = _price("llama3-8b", plan, job=job)
    by_recipe = {r: _price("llama3-8b", plan | {"fp8_recipe": r}, job=job) for r in ("delayed", "current", "mxfp8")}
    bf16 = _price("llama3-8b", plan, job=JobSpec(seq_len=8192, global_batch=8))
    for e in by_recipe.values():
        assert e.step_time_s < bf16.step_time_s
        assert e.stage_memory[0][MemoryTerm.FP8_WEIGHTS] > 0
        assert e.stage_memory[0][MemoryTerm.WEIGHTS] == pytest.approx(2 * legacy.stage_memory[0][MemoryTerm.WEIGHTS])
    assert by_recipe["delayed"].step_time_s < by_recipe["current"].step_time_s  # current scaling re-reads for amax
    assert by_recipe["current"].step_time_s > legacy.step_time_s  # the same casts, bf16 weights and collectives
    assert by_recipe["mxfp8"].stage_memory[0][MemoryTerm.FP8_WEIGHTS] > by_recipe["delayed"].stage_memory[0][MemoryTerm.FP8_WEIGHTS]
    sc = Scenario(model=model_preset("llama3-8b"), cluster=cluster_preset("dgx-h100"),
                  job=JobSpec(seq_len=8192, global_batch=8))
    with pytest.raises(ValueError, match="fp8_recipe"):
        check(Plan.model_validate(plan | {"fp8_recipe": "delayed"}), sc)


def test_ring_cp_merges_cost_memory_traffic_per_step():
    """Ring CP merges every step's partial output and accumulates dQ, dK, dV (cost/compute.py
    RING_MERGE_BYTES_*): no merge without a ring, traffic growing with the ring's steps at equal
    per-GPU tokens, and float32 merges (torch context_parallel) costing more than bf16 ones (TE)."""
    from planner.cost.compute import RING_MERGE_BYTES_FWD, _ring_merge_s, split_for
    spec = model_preset("llama3-8b").model_copy(update={"max_position_embeddings": 131072})
    graph = extract_graph(spec, seq_len=131072)
    hw = datasheet_profile(cluster_preset("dgx-h100", num_nodes=1))
    q = 1e9
    splits = {cp: split_for(Plan.model_validate({"dims": {"cp": cp}}), graph=graph, precision="bf16")
              for cp in (1, 2, 8)}
    assert _ring_merge_s(q, split=splits[1], hw=hw) == (0.0, 0.0)
    f2, b2 = _ring_merge_s(q, split=splits[2], hw=hw)
    f8, b8 = _ring_merge_s(q, split=splits[8], hw=hw)
    assert 0 < f2 < f8 and f8 == pytest.approx(7 * f2) and b8 == pytest.approx(7 * b2)
    assert f2 == pytest.approx(hw.memory_bound_s(RING_MERGE_BYTES_FWD[False] * q))
    fp32 = replace(splits[8], ring_merge_fp32=True)
    f32, b32 = _ring_merge_s(q, split=fp32, hw=hw)
    assert f32 > f8 and b32 > b8


def test_ring_cp_runs_in_series_beside_a_persistent_attention_kernel():
    """cuDNN attention on Hopper is persistent (hardware/datasheets.FLASH_PERSISTENT): the ring's p2p
    kernels cannot share its SMs, so the ring's traffic is exposed; FA2 and Ampere cuDNN keep it hidden."""
    from planner.cost.context import CpComm, cp_exposed_s
    from planner.scenario import AttentionKernel
    h100, a100 = (datasheet_profile(cluster_preset(c)) for c in ("dgx-h100", "dgx-a100"))
    assert h100.flash["cudnn"].persistent and not h100.flash["flash"].persistent
    assert not a100.flash["cudnn"].persistent
    ring = CpComm(ring_fwd_s=1.0, ring_bwd_s=2.0)
    assert cp_exposed_s(ring, attention_fwd_s=3.0, attention_bwd_s=6.0, ring_ranks=4) == (0.0, 0.0)
    assert cp_exposed_s(ring, attention_fwd_s=3.0, attention_bwd_s=6.0, ring_ranks=4, overlap=False) == (1.0, 2.0)
    spec = model_preset("llama3-8b").model_copy(update={"max_position_embeddings": 32768})
    cl = cluster_preset("dgx-h100", num_nodes=2)
    job = JobSpec(seq_len=32768, global_batch=2, attention=AttentionKernel.CUDNN)
    graph = extract_graph(spec, seq_len=32768)
    plan = Plan.model_validate({"dims": {"cp": 16}, "recompute": "full", "zero_stage": 1})
    overlapped = h100.model_copy(update={"flash": {**h100.flash, "cudnn": h100.flash["cudnn"].model_copy(
        update={"persistent": False})}})
    serial, hidden = (estimate(graph, plan, hw=hw, cluster=cl, job=job) for hw in (h100, overlapped))
    assert serial.time_breakdown_s[TimeTerm.EXPOSED_COMM] > hidden.time_breakdown_s[TimeTerm.EXPOSED_COMM]
    assert serial.step_time_s > hidden.step_time_s
