"""Fast executor checks with no process group: rank grids, launch validation, `planner run` errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from executor.launch import Launch, check_launch, torchrun_command
from executor.ring_attention import zigzag_positions
from executor.train import RunOptions
from planner.cli import app
from planner.plan import Plan, rank_grid
from planner.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
DENSE = REPO / "scenarios" / "tiny-dense_cpu4.toml"
MOE = REPO / "scenarios" / "tiny-moe_cpu4.toml"


def test_attention_grid_is_mixed_radix_last_axis_fastest():
    grid = rank_grid(Plan.model_validate({"dims": {"pp": 2, "dp": 2, "tp": 2}})).attention
    assert grid.shape == (2, 2, 1, 2)  # pp, dp, cp, tp
    assert grid[1, 0, 0, 1].item() == 1 * 4 + 0 * 2 + 1


def test_expert_grid_folds_onto_each_stage():
    plan = Plan.model_validate({"dims": {"dp": 4, "ep": 2}})
    grid = rank_grid(plan).expert  # pp, edp, ep, etp
    assert grid[0, :, :, 0].tolist() == [[0, 1], [2, 3]]  # ep groups {0,1},{2,3}; edp groups {0,2},{1,3}
    odd = Plan.model_validate({"dims": {"dp": 2, "pp": 2, "ep": 2}, "rank_order": ["dp", "pp", "cp", "tp"]})
    att, exp = rank_grid(odd).attention, rank_grid(odd).expert
    for stage in range(2):
        assert sorted(att[:, stage].flatten().tolist()) == sorted(exp[stage].flatten().tolist())


def test_zigzag_positions_balance_causal_work():
    held = [zigzag_positions(16, rank=r, cp=4).tolist() for r in range(4)]
    assert sorted(sum(held, [])) == list(range(16))
    assert len({sum(p) for p in held}) == 1  # equal position sums = equal causal work


def test_check_launch_world_size_and_unsupported_layouts():
    scenario = load_scenario(DENSE)
    assert check_launch(Plan.model_validate({"dims": {"dp": 2}}), scenario, launch=Launch()) == 2
    with pytest.raises(ValueError, match="nproc"):
        check_launch(Plan.model_validate({"dims": {"dp": 2}}), scenario, launch=Launch(nproc=4))
    with pytest.raises(ValueError, match="tp: 4 does not divide num_key_value_heads=2"):  # planner.plan.check
        check_launch(Plan.model_validate({"dims": {"tp": 4}}), scenario, launch=Launch())
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        check_launch(Plan.model_validate({"dims": {"dp": 4}}), scenario, launch=Launch(nnodes=2))
    assert check_launch(Plan.model_validate({"dims": {"tp": 2, "etp": 2}}), load_scenario(MOE), launch=Launch()) == 2
    with pytest.raises(ValueError, match="schedule"):
        check_launch(Plan.model_validate({"dims": {"pp": 2}, "schedule": "zero-bubble"}), scenario, launch=Launch())


def test_torchrun_command_multi_node(tmp_path):
    cmd = torchrun_command(nproc=4, launch=Launch(nnodes=2, node_rank=1, rdzv_endpoint="n0:29500", max_restarts=2),
                           run_dir=tmp_path, options=RunOptions(steps=3, checkpoint_every=1))
    assert "--nnodes=2" in cmd and "--rdzv-endpoint=n0:29500" in cmd and "--standalone" not in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "executor" and "--max-restarts=2" in cmd


@pytest.mark.parametrize("plan_json, args, needle", [
    ('{"dims": {"dp": 2}}', ["--nproc", "3"], "nproc"),
    ('{"dims": {"tp": 8}}', [], "tp"),
    ('{"dims": {"dp": 2, "bogus": 1}}', [], "bogus"),
])
def test_planner_run_rejects_bad_input_in_one_line(tmp_path, plan_json, args, needle):
    plan = tmp_path / "plan.json"
    plan.write_text(plan_json)
    result = CliRunner().invoke(app, ["run", str(plan), "--scenario", str(DENSE), *args])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and needle in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # nothing written
