"""The report's predicted-vs-measured section names the plan that was measured, never another."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from executor.train import Measurement
from planner.cli import app
from planner.plan import Plan
from planner.report import render_report

REPO = Path(__file__).resolve().parents[2]


def _measurement(plan: Plan) -> str:
    return Measurement(scenario="tiny-dense_cpu4", model="tiny-dense", plan=json.loads(plan.to_json()), world_size=4,
                       backend="gloo", device="cpu", steps=3, step_time_s=0.25, step_times_s=[0.25] * 3,
                       tokens_per_s_per_gpu=2000.0, peak_memory_gib=0.4, memory_gib=[0.4] * 4,
                       losses=[6.3, 6.2, 6.1]).model_dump_json()


def test_a_plan_outside_the_search_is_labelled_as_itself(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    done = CliRunner().invoke(app, ["search", str(REPO / "scenarios/tiny-dense_cpu4.toml"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    searched = Plan.load(out / "plan.json")
    other = Plan(dims={"tp": 4}, micro_batch_size=8, sequence_parallel=True)  # tp4 is not what the search keeps
    result = json.loads((out / "result.json").read_text())
    assert all(Plan.model_validate(c["plan"]) != other for c in result["detailed"].values())
    (out / "measurement.json").write_text(_measurement(other))
    html = render_report(out).read_text()
    assert f"Measured plan {other.describe()}" in html
    assert f"Measured plan {searched.describe()}" not in html
    assert "not among this search&#39;s detailed plans" in html or "not among this search's detailed plans" in html
    (out / "measurement.json").write_text(_measurement(searched))  # the best plan itself: compared with it
    assert f"Measured plan {searched.describe()}" in render_report(out).read_text()
