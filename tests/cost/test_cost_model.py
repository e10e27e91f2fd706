"""estimate(): invariants a Megatron performance engineer expects, on real traced graphs."""

from __future__ import annotations

import json

import pytest

from planner.scenario import cluster_preset
from planner.cost import estimate, memory_lower_bound_bytes
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import PRESETS
from planner.plan import Axis, Plan
from planner.scenario import JobSpec, ShardingRuntime

SEQ = 4096
CLUSTER = cluster_preset("dgx-h100", num_nodes=4)  # 32 GPUs
HW = datasheet_profile(CLUSTER)
JOB = JobSpec(seq_len=SEQ, global_batch=64)


@pytest.fixture(scope="module")
def dense():
    return extract_graph(PRESETS["llama3-8b"], seq_len=SEQ)


@pytest.fixture(scope="module")
def moe():
    return extract_graph(PRESETS["mixtral-8x7b"], seq_len=SEQ)


def _est(graph, **plan):
    return estimate(graph, Plan(**plan), hw=HW, cluster=CLUSTER, job=JOB)


def test_estimate_is_complete_and_json_ready(dense) -> None:
    est = _est(dense, dims={"tp": 4, "pp": 2, "dp": 4}, sequence_parallel=True)
    data = json.loads(json.dumps(est.to_dict()))
    for key in ("step_time_s", "tokens_per_s_per_gpu", "mfu", "hfu", "peak_memory_gib", "memory_gib", "time_breakdown_s"):
        assert key in data
    assert set(data["time_breakdown_s"]) >= {"compute", "tp", "cp", "ep", "pp", "dp", "exposed_comm", "bubble", "optimizer"}
    assert len(data["memory_gib"]) == 2 and {"weights", "gradients", "optimizer", "activations"} <= set(data["memory_gib"][0])
    assert 0.2 < est.mfu < 0.75 and est.hfu == pytest.approx(est.mfu)
    parts = sum(est.time_breakdown_s[k] for k in ("compute", "recompute", "exposed_comm", "bubble", "optimizer"))
    assert parts == pytest.approx(est.step_time_s, rel=1e-6)
    assert est.tokens_per_s_per_gpu == pytest.approx(JOB.tokens_per_step / (est.step_time_s * 32))


def test_more_tp_means_less_weight_memory(dense) -> None:
    weights = [_est(dense, dims={"tp": tp, "dp": 32 // tp}).stage_memory[0]["weights"] for tp in (1, 2, 4, 8)]
    assert weights == sorted(weights, reverse=True) and weights[0] > 7 * weights[-1]


def test_zero_stages_shard_optimizer_then_gradients_then_weights(dense) -> None:
    mem = [_est(dense, dims={"dp": 32}, zero_stage=z).stage_memory[0] for z in range(4)]
    assert mem[1]["optimizer"] == pytest.approx(mem[0]["optimizer"] / 32)
    assert mem[1]["gradients"] == mem[0]["gradients"]
    assert mem[2]["gradients"] == pytest.approx(mem[0]["gradients"] / 32)
    assert mem[2]["weights"] == mem[0]["weights"]
    # ZeRO-3 (FSDP, the default runtime) shards everything and keeps one parameter copy, the fp32
    # one the optimizer steps: 4 + 4 + 8 bytes per parameter instead of 2 + 4 + 12
    assert mem[3]["gradients"] == pytest.approx(mem[0]["gradients"] / 32)
    assert mem[3]["weights"] == pytest.approx(2 * mem[0]["weights"] / 32)
    assert mem[3]["optimizer"] == pytest.approx(mem[0]["optimizer"] * 8 / 12 / 32)
    states = ("weights", "gradients", "optimizer")
    assert sum(mem[3][t] for t in states) == pytest.approx(sum(mem[0][t] for t in states) / 32 * 16 / 18)


def test_deepspeed_zero3_keeps_16bit_partitions_beside_the_fp32_master(dense) -> None:
    fsdp = _est(dense, dims={"dp": 32}, zero_stage=3).stage_memory[0]
    job = JobSpec(seq_len=SEQ, global_batch=64, zero3_runtime=ShardingRuntime.DEEPSPEED_2021)
    deepspeed = estimate(dense, Plan(dims={"dp": 32}, zero_stage=3), hw=HW, cluster=CLUSTER, job=job).stage_memory[0]
    assert deepspeed["weights"] == pytest.approx(fsdp["weights"] / 2)  # 2-byte partition, 4-byte master
    assert deepspeed["optimizer"] == pytest.approx(fsdp["optimizer"] * 12 / 8)


def test_tp_across_nodes_is_slower_than_inside(dense) -> None:
    inside = _est(dense, dims={"tp": 8, "dp": 4})
    across = _est(dense, dims={"tp": 8, "dp": 4}, rank_order=[Axis.PP, Axis.CP, Axis.TP, Axis.DP])
    assert across.time_breakdown_s["tp"] > 4 * inside.time_breakdown_s["tp"]
    assert across.step_time_s > inside.step_time_s


def test_recompute_trades_memory_for_time(dense) -> None:
    base = {"dims": {"tp": 4, "dp": 8}, "sequence_parallel": True}
    none, sel, full = (_est(dense, **base, recompute=r) for r in ("none", "selective", "full"))
    acts = [e.stage_memory[0]["activations"] for e in (none, sel, full)]
    assert acts[0] >= acts[1] > acts[2]
    assert none.step_time_s < full.step_time_s and full.hfu > full.mfu
    assert full.time_breakdown_s["recompute"] > 0.2 * full.time_breakdown_s["compute"]


def test_sequence_parallel_shards_activations(dense) -> None:
    off = _est(dense, dims={"tp": 8, "dp": 4})
    on = _est(dense, dims={"tp": 8, "dp": 4}, sequence_parallel=True)
    assert on.stage_memory[0]["activations"] < 0.6 * off.stage_memory[0]["activations"]


def test_pipeline_bubble_shrinks_with_more_micro_batches(dense) -> None:
    few = _est(dense, dims={"pp": 4, "dp": 8}, micro_batch_size=2)
    many = _est(dense, dims={"pp": 4, "dp": 8}, micro_batch_size=1)
    assert many.bubble_fraction < few.bubble_fraction
    interleaved = _est(dense, dims={"pp": 4, "dp": 8}, schedule="interleaved-1f1b", virtual_stages=2)
    assert interleaved.bubble_fraction < many.bubble_fraction
    assert many.stage_memory[0]["activations"] > many.stage_memory[-1]["activations"]  # 1F1B: p - i in flight


def test_context_parallel_traffic_hides_behind_attention(dense) -> None:
    est = _est(dense, dims={"cp": 2, "tp": 4, "dp": 4}, sequence_parallel=True)
    assert est.time_breakdown_s["cp"] > 0
    assert est.stage_memory[0]["activations"] < _est(dense, dims={"tp": 4, "dp": 8},
                                                      sequence_parallel=True).stage_memory[0]["activations"]


def test_expert_parallel_spreads_experts_and_costs_all_to_all(moe) -> None:
    local = _est(moe, dims={"dp": 32, "ep": 1}, zero_stage=1)
    spread = _est(moe, dims={"dp": 32, "ep": 8}, zero_stage=1)
    assert spread.stage_memory[0]["weights"] < 0.3 * local.stage_memory[0]["weights"]
    assert spread.time_breakdown_s["ep"] > 0 and local.time_breakdown_s["ep"] == 0


def test_timeline_matches_the_closed_form(dense) -> None:
    plan = Plan(dims={"pp": 4, "dp": 8}, schedule="interleaved-1f1b", virtual_stages=2)
    fast = estimate(dense, plan, hw=HW, cluster=CLUSTER, job=JOB)
    traced = estimate(dense, plan, hw=HW, cluster=CLUSTER, job=JOB, timeline=True)
    assert traced.step_time_s == pytest.approx(fast.step_time_s, rel=0.02)
    assert traced.timeline and fast.timeline is None


def test_memory_lower_bound_never_exceeds_the_estimate(dense) -> None:
    for plan in (Plan(dims={"dp": 32}), Plan(dims={"tp": 8, "pp": 4}), Plan(dims={"dp": 32}, zero_stage=3)):
        est = estimate(dense, plan, hw=HW, cluster=CLUSTER, job=JOB)
        assert 0 < memory_lower_bound_bytes(dense, plan, JOB, CLUSTER) <= est.peak_memory_bytes


def test_mismatched_graph_or_world_is_a_one_line_value_error(dense) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        estimate(dense, Plan(dims={"dp": 32}), hw=HW, cluster=CLUSTER, job=JobSpec(seq_len=2048, global_batch=64))
    with pytest.raises(ValueError, match="world size"):
        estimate(dense, Plan(dims={"dp": 16}), hw=HW, cluster=CLUSTER, job=JOB)


def test_tied_embeddings_are_copied_to_the_last_stage() -> None:
    graph = extract_graph(PRESETS["gpt3-1.3b"], seq_len=2048)
    job = JobSpec(seq_len=2048, global_batch=64)
    table = PRESETS["gpt3-1.3b"].vocab_size * PRESETS["gpt3-1.3b"].hidden_size * 2  # bf16 bytes
    one = estimate(graph, Plan(dims={"dp": 32}), hw=HW, cluster=CLUSTER, job=job)
    two = estimate(graph, Plan(dims={"pp": 2, "dp": 16}), hw=HW, cluster=CLUSTER, job=job)
    assert two.stage_memory[1]["weights"] > table
    assert two.stage_memory[0]["weights"] + two.stage_memory[1]["weights"] == pytest.approx(
        one.stage_memory[0]["weights"] + table, rel=0.01)


def test_te_fp8_keeps_one_byte_gemm_inputs(dense) -> None:
    """Transformer Engine saves FP8-cast GEMM inputs for the wgrad; torchao re-casts 16-bit ones.
    Per token per layer the TE stack keeps h (QKV and MLP norm outputs: -2h, the projection's FP8
    copy beside flash's 16-bit output: +h) plus ffn (the down projection's input) bytes less."""
    plan = Plan(dims={"tp": 4, "dp": 8}, sequence_parallel=True, fp8_recipe="current")
    acts = {}
    for framework in ("megatron-bridge-25.11", "torchtitan-2024-12"):
        job = JobSpec(seq_len=SEQ, global_batch=64, precision="fp8", framework=framework)
        est = estimate(dense, plan, hw=HW, cluster=CLUSTER, job=job)
        acts[framework] = est.stage_memory[0]["activations"]
    spec = PRESETS["llama3-8b"]
    per_layer = SEQ * (spec.hidden_size + spec.intermediate_size) / 4  # mbs 1, SP and TP over 4
    saved = acts["torchtitan-2024-12"] - acts["megatron-bridge-25.11"]
    assert saved == pytest.approx(spec.num_hidden_layers * per_layer, rel=0.02)
