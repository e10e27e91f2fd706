"""`planner run`: which scenario a plan runs under, and the checks made before any rank starts."""

from __future__ import annotations

from pathlib import Path

from planner.errors import UserError, read_json
from planner.scenario import Scenario


def searched_scenario(plan_path: Path) -> Scenario | None:
    """The scenario `planner search` wrote next to this plan (result.json), if any."""
    result = plan_path.parent / "result.json"
    if not result.is_file():
        return None
    raw = read_json(result, what="result.json")
    try:
        return Scenario.model_validate(raw["scenario"])
    except (KeyError, TypeError, ValueError):
        raise UserError("has no valid 'scenario'", file=result,
                        fix="re-run `planner search --out DIR`, or pass --scenario") from None


def scenario_for_run(plan_path: Path, given: Scenario | None, *, default: Scenario) -> Scenario:
    """--scenario, else the one the plan was searched for, else the embedded default; a plan
    searched for another model or job is refused (it would train the wrong model, possibly
    one far too large for this machine)."""
    searched = searched_scenario(plan_path)
    if given is None:
        return searched or default
    if searched is not None and (searched.model != given.model or searched.job != given.job):
        raise UserError(f"was searched for scenario '{searched.name}' (model {searched.model.name}, "
                        f"its result.json), not '{given.name}' (model {given.model.name})", file=plan_path,
                        field="--scenario", fix="pass the scenario it was searched for, or search this one")
    return given
