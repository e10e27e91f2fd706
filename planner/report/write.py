"""Writing a search's output directory atomically, and re-rendering its report (files + html)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from planner.report.files import (
    chrome_trace, csv_row, result_dict, sort_key, status_of, to_jsonable, write_json, write_plans_csv,
)
from planner.report.html import render_html
from planner.report.output import staged_dir, write_file
from planner.scenario import Scenario
from planner.search.result import SearchResult


def write_search_outputs(result: SearchResult, scenario: Scenario, out_dir: Path, *,
                         measurement: dict[str, Any] | None = None) -> Path:
    """Write out_dir/{plans.csv, plan.json, result.json, trace.json, report.html} atomically.

    Everything is written into a hidden temp directory inside out_dir and then renamed into
    place (report/output.staged_dir), so a failed or interrupted run leaves the previous outputs
    (or no out_dir at all), never a half-written set. Every other entry of out_dir
    (measurement.json, routing traces, dotfiles) is left where it is. Returns out_dir.
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        _write_files(tmp, result, scenario, measurement=measurement)
        previous = out_dir / "measurement.json"  # an earlier run's measurement belongs in the report
        if previous.is_file() and not (tmp / previous.name).exists():
            shutil.copy2(previous, tmp / previous.name)
        (tmp / "report.html").write_text(render_html(tmp), encoding="utf-8")
    return out_dir


def render_report(out_dir: Path) -> Path:
    """Re-render out_dir/report.html from the saved JSON/CSV (no search); atomic file replace."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file, not a results directory; pass the directory `planner search --out` wrote")
    for name in ("result.json", "plans.csv"):
        if not (out_dir / name).is_file():
            raise ValueError(f"{out_dir}: no {name} here; run `planner search --out {out_dir}` first")
    write_file(out_dir / "report.html", render_html(out_dir))
    return out_dir / "report.html"


def _write_files(tmp: Path, result: SearchResult, scenario: Scenario, *, measurement: dict[str, Any] | None) -> None:
    candidates = list(result.candidates)
    best = result.best
    index = {id(c): i for i, c in enumerate(candidates)}
    pareto_ids = {index[id(c)] for c in result.pareto}
    rows = [csv_row(i, c, status=status_of(c, best), pareto=i in pareto_ids,
                    global_batch=scenario.job.global_batch) for i, c in enumerate(candidates)]
    write_plans_csv(tmp / "plans.csv", sorted(rows, key=sort_key))
    if best is not None:
        (tmp / "plan.json").write_text(best.plan.to_json() + "\n")
    write_json(tmp / "result.json", result_dict(result, scenario, candidates))
    write_json(tmp / "trace.json", chrome_trace(best, scenario), compact=True)
    if measurement is not None:
        write_json(tmp / "measurement.json", to_jsonable(measurement))
