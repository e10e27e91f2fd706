"""`planner estimate`: flags or plan.json in, tables / one JSON object / Chrome trace out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from conftest import SCENARIOS
from planner.cli import app
from planner.plan import Plan

SCENARIO = str(SCENARIOS / "llama3-70b_h100x64.toml")


def _run(*args: str):
    return CliRunner().invoke(app, ["estimate", SCENARIO, *args])


def test_json_has_the_contract_fields_and_dp_defaults_to_the_rest(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    result = _run("--tp", "8", "--pp", "4", "--vp", "2", "--recompute", "selective", "--json", "--trace", str(trace))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["plan"]["dims"]["dp"] == 2 and data["plan"]["schedule"] == "interleaved-1f1b"
    for key in ("step_time_s", "tokens_per_s_per_gpu", "mfu", "hfu", "peak_memory_gib", "memory_gib", "time_breakdown_s"):
        assert key in data
    assert len(data["memory_gib"]) == 4 and "activations" in data["memory_gib"][0]
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["tid"] for e in events} == {0, 1, 2, 3}


def test_plan_file_and_table_output(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(Plan(dims={"tp": 8, "pp": 2, "dp": 4}, sequence_parallel=True, recompute="full").to_json())
    result = _run("--plan", str(plan))
    assert result.exit_code == 0, result.output
    assert "time breakdown" in result.stdout and "memory per GPU" in result.stdout


def test_bad_plans_fail_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    for args in (["--tp", "3"], ["--tp", "16", "--pp", "8"], ["--tp", "8", "--recompute", "most"],
                 ["--tp", "8", "--pp", "80", "--dp", "1"]):
        result = _run(*args, "--trace", str(trace))
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not trace.exists()
