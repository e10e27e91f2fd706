"""End to end through torchrun: resume under a different plan; a killed rank restarts and loses no step."""

from __future__ import annotations

import pytest

from executor import Launch, RunOptions, run_plan
from planner.plan import Plan
from tests.executor.test_executor_parity import ADAMW, DENSE, MOE, TOLERANCE, reference_losses, scenario_for

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TOTAL_STEPS = 6


def _assert_matches(losses: list[float], ref: list[float]) -> None:
    assert len(losses) == len(ref)
    worst = max(abs(a - b) for a, b in zip(losses, ref))
    assert worst < TOLERANCE, f"{losses} vs {ref}"


def _resume_under_other_plan(spec, first: dict, second: dict, tmp_path) -> tuple:
    scenario = scenario_for(spec, ADAMW)
    saved = run_plan(Plan.model_validate(first), scenario, out_dir=tmp_path / "a",
                     options=RunOptions(steps=4, checkpoint_every=2, checkpoint_dir=tmp_path / "a" / "ckpt"))
    resumed = run_plan(Plan.model_validate(second), scenario, out_dir=tmp_path / "b",
                       options=RunOptions(steps=TOTAL_STEPS, resume_from=tmp_path / "a" / "ckpt"))
    return saved, resumed


def test_resume_moe_ep_into_pipeline_and_routing_trace(tmp_path):
    placement = [[1, 0, 0, 1]] * MOE.num_moe_layers
    saved, resumed = _resume_under_other_plan(
        MOE, {"dims": {"dp": 2, "ep": 2}, "zero_stage": 1, "micro_batch_size": 4, "expert_placement": placement},
        {"dims": {"pp": 2}, "micro_batch_size": 2}, tmp_path)
    assert resumed.resumed_from_step == 4
    _assert_matches(resumed.losses, reference_losses(MOE, ADAMW, steps=TOTAL_STEPS))
    routing = saved.routing
    k, tokens = MOE.num_experts_per_tok, ADAMW.global_batch * ADAMW.seq_len
    assert [layer["layer"] for layer in routing["layers"]] == list(range(MOE.num_hidden_layers))
    assert all(sum(layer["expert_tokens"]) == 4 * tokens * k for layer in routing["layers"])
    last_micro_tokens = 2 * 4 * ADAMW.seq_len  # two dp streams, one micro-batch of 4 sequences each
    assert all(sum(map(sum, a["matrix"])) == last_micro_tokens * k * k for a in routing["affinity"])


def test_killed_rank_restarts_then_resumes_under_another_plan(tmp_path):
    """FSDP (ZeRO-3) run loses a rank after step 3, torchrun restarts it from the step-2 checkpoint;
    its step-4 checkpoint then continues under TP + sequence parallelism."""
    scenario = scenario_for(DENSE, ADAMW)
    options = RunOptions(steps=4, checkpoint_every=2, checkpoint_dir=tmp_path / "ckpt", kill_at_step=3)
    killed = run_plan(Plan.model_validate({"dims": {"dp": 2}, "micro_batch_size": 4, "zero_stage": 3}), scenario,
                      out_dir=tmp_path / "a", options=options, launch=Launch(max_restarts=1))
    resumed = run_plan(Plan.model_validate({"dims": {"tp": 2}, "sequence_parallel": True}), scenario,
                       out_dir=tmp_path / "b", options=RunOptions(steps=TOTAL_STEPS, resume_from=tmp_path / "ckpt"))
    ref = reference_losses(DENSE, ADAMW, steps=TOTAL_STEPS)
    assert killed.restarts == 1 and killed.resumed_from_step == 2
    _assert_matches(killed.losses, ref[:4])
    assert resumed.resumed_from_step == 4 and len(resumed.step_times_s) == TOTAL_STEPS - 4
    _assert_matches(resumed.losses, ref)


def test_resume_fsdp_experts_under_expert_tp(tmp_path):
    """Experts FSDP-sharded over edp (ZeRO-3) saved per expert; reloaded column/row-sharded (etp2) under tp2."""
    saved, resumed = _resume_under_other_plan(
        MOE, {"dims": {"dp": 2}, "zero_stage": 3, "micro_batch_size": 4},
        {"dims": {"tp": 2, "etp": 2}, "sequence_parallel": True}, tmp_path)
    ref = reference_losses(MOE, ADAMW, steps=TOTAL_STEPS)
    _assert_matches(saved.losses, ref[:4])
    assert resumed.resumed_from_step == 4
    _assert_matches(resumed.losses, ref)
