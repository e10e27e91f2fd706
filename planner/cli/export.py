"""`planner export`: read the plan and its scenario, write the framework's options."""

from __future__ import annotations

import json
from pathlib import Path

from planner.plan import Plan, check
from planner.report import ExportFormat, export_plan
from planner.scenario import Scenario, load_scenario


def scenario_for(plan_path: Path, scenario: Path | None) -> Scenario:
    """The given scenario, else the one the search saved next to the plan (result.json)."""
    if scenario is not None:
        return load_scenario(scenario)
    saved = plan_path.parent / "result.json"
    if not saved.is_file():
        raise ValueError(f"--scenario: {plan_path.parent} has no result.json to take the scenario from; "
                         "pass --scenario SCENARIO.toml")
    return Scenario.model_validate(json.loads(saved.read_text())["scenario"])


def run_export(plan_path: Path, *, fmt: str, scenario: Path | None, out: Path | None) -> str:
    try:
        kind = ExportFormat(fmt)
    except ValueError:
        raise ValueError(f"--format: '{fmt}' is not one of {', '.join(f.value for f in ExportFormat)}") from None
    plan, sc = Plan.load(plan_path), scenario_for(plan_path, scenario)
    check(plan, sc)
    text = export_plan(plan, sc, kind).text
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return text
