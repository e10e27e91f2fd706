"""Korthikanti et al. 2022 Table 5 through the CLI: `planner estimate SCENARIO --plan PLAN --json` for
the 8 cases in scenarios/korthikanti2022 (scenario and plan files only), against the paper's
iteration times (measured.json). Calculon reports 3.65% mean / 8.9% max on the same cases.
Run: python bench/korthikanti_table5.py
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from planner.cli import app

CASES = Path(__file__).resolve().parents[1] / "scenarios" / "korthikanti2022"


def table5_errors() -> dict[str, tuple[float, float]]:
    """case -> (measured s, predicted s), every prediction from the CLI."""
    measured = json.loads((CASES / "measured.json").read_text())["iteration_time_s"]
    runner, out = CliRunner(), {}
    for case, seconds in measured.items():
        model = case.rsplit("_", 1)[0]
        res = runner.invoke(app, ["estimate", str(CASES / f"{model}.toml"), "--plan", str(CASES / f"{case}.plan.json"),
                                  "--json"])
        assert res.exit_code == 0, res.output
        out[case] = (seconds, json.loads(res.output)["step_time_s"])
    return out


def main() -> None:
    errors = []
    for case, (measured, predicted) in table5_errors().items():
        errors.append(abs(predicted / measured - 1))
        print(f"{case:22} measured {measured:7.2f} s  predicted {predicted:7.2f} s  {predicted / measured - 1:+6.1%}")
    print(f"Korthikanti Table 5 (CLI, scenario files): mean {sum(errors) / len(errors):.2%}, max {max(errors):.2%}")


if __name__ == "__main__":
    main()
