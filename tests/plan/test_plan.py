"""ParallelDims and Plan: validation once, JSON round trip, plan vs world size and model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner.scenario import cluster_preset
from planner.scenario import model_preset
from planner.plan import Axis, ParallelDims, Plan, Recompute, Schedule, ZeroStage, check, even_split
from planner.scenario import JobSpec, Scenario


def _scenario(model: str = "llama3-70b", nodes: int = 8, gbs: int = 256) -> Scenario:
    return Scenario(model=model_preset(model), cluster=cluster_preset("dgx-h100", num_nodes=nodes),
                    job=JobSpec(seq_len=4096, global_batch=gbs))


def test_dims_world_size_and_folding() -> None:
    dims = ParallelDims(dp=4, tp=8, pp=2, ep=8, etp=1)
    assert dims.world_size == 64 and dims.edp == 4
    assert dims.tp > 1 and dims.cp == 1
    assert dims.degree(Axis.EDP) == 4


def test_dims_reject_bad_folding_and_degrees() -> None:
    with pytest.raises(ValueError, match="ep\\*etp: 8\\*2 must divide dp\\*cp\\*tp = 8"):
        ParallelDims(dp=1, tp=8, ep=8, etp=2)
    with pytest.raises(ValueError, match="tp: degree must be >= 1"):
        ParallelDims(tp=0)


def test_plan_json_round_trip() -> None:
    plan = Plan(dims={"dp": 2, "tp": 8, "pp": 4}, micro_batch_size=2, virtual_stages=2,
                schedule=Schedule.INTERLEAVED_1F1B, zero_stage=ZeroStage.OPTIMIZER,
                recompute=Recompute.SELECTIVE, sequence_parallel=True,
                blocks_per_stage=[9, 10, 10, 11, 11, 10, 10, 9])
    again = Plan.model_validate_json(plan.to_json())
    assert again == plan
    assert '"version": 1' in plan.to_json()
    assert again.dims == ParallelDims(dp=2, tp=8, pp=4)


def test_plan_rejects_unknown_version_and_fields() -> None:
    with pytest.raises(ValidationError, match="plan version 7 is not supported"):
        Plan(version=7)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Plan.model_validate({"dims": {"dp": 1}, "mystery": 1})


def test_plan_validate_for_world_size_and_model() -> None:
    sc = _scenario()
    check(Plan(dims={"dp": 2, "tp": 8, "pp": 4}), sc)
    with pytest.raises(ValueError, match="dims: dp\\*tp\\*pp\\*cp = 1\\*8\\*4\\*1 = 32 but the cluster has 64 GPUs"):
        check(Plan(dims={"dp": 1, "tp": 8, "pp": 4}), sc)
    with pytest.raises(ValueError, match="tp: 128 does not divide num_attention_heads=64"):
        check(Plan(dims={"tp": 128}), _scenario(nodes=16))
    # no KV-head replication: Megatron-LM (num_query_groups % tp) and the executor refuse it alike
    with pytest.raises(ValueError, match="tp: 16 does not divide num_key_value_heads=8; lower tp"):
        check(Plan(dims={"dp": 1, "tp": 16, "pp": 4}), sc)
    with pytest.raises(ValueError, match="ep/etp: expert parallelism needs an MoE model"):
        check(Plan(dims={"dp": 8, "tp": 8, "ep": 2}), sc)


def test_plan_validate_for_batch_and_stages() -> None:
    sc = _scenario(gbs=96)
    with pytest.raises(ValueError, match="micro_batch_size: global_batch=96 is not divisible"):
        check(Plan(dims={"dp": 64}, micro_batch_size=4), sc)
    with pytest.raises(ValueError, match="blocks_per_stage: sums to 79"):
        check(Plan(dims={"dp": 8, "tp": 4, "pp": 2}, blocks_per_stage=[40, 39]), sc)
    with pytest.raises(ValidationError, match="virtual_stages > 1 needs schedule"):
        Plan(dims={"pp": 2}, virtual_stages=2)


def test_expert_placement_must_balance() -> None:
    sc = _scenario(model="mixtral-8x7b")
    ok = Plan(dims={"dp": 8, "tp": 8, "ep": 2}, expert_placement=[[0, 1, 0, 1, 0, 1, 0, 1]] * 32)
    check(ok, sc)
    with pytest.raises(ValueError, match="expert_placement\\[0\\]: must give each of 2 EP ranks exactly 4"):
        check(Plan(dims={"dp": 8, "tp": 8, "ep": 2}, expert_placement=[[0] * 8] * 32), sc)
    with pytest.raises(ValueError, match="expert_placement: needs one row of 8 entries per MoE layer \\(32 layers\\)"):
        check(Plan(dims={"dp": 8, "tp": 8, "ep": 2}, expert_placement=[[0, 1] * 4]), sc)
    with pytest.raises(ValueError, match="expert_load: needs one row of 8 entries"):
        check(Plan(dims={"dp": 8, "tp": 8, "ep": 2}, expert_load=[[1.0] * 7] * 32), sc)


def test_even_split_and_describe() -> None:
    assert even_split(10, 4) == [3, 3, 2, 2]
    plan = Plan(dims={"dp": 2, "tp": 8, "pp": 4}, micro_batch_size=1, zero_stage=1, sequence_parallel=True)
    assert plan.describe() == "dp2xtp8xpp4 (mbs1, 1f1b, zero1, sp)"
    assert plan.num_micro_batches(256) == 128
