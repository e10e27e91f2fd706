"""Writing a search's output directory atomically, and re-rendering its report (files + html)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from planner.report.files import (
    OUTPUT_FILES, chrome_trace, csv_row, result_dict, sort_key, status_of, to_jsonable, write_json, write_plans_csv,
)
from planner.report.html import render_html
from planner.scenario import Scenario
from planner.search.result import SearchResult


def write_search_outputs(result: SearchResult, scenario: Scenario, out_dir: Path, *,
                         measurement: dict[str, Any] | None = None) -> Path:
    """Write out_dir/{plans.csv, plan.json, result.json, trace.json, report.html} atomically.

    Everything is written into a temporary sibling directory which then replaces out_dir, so a
    failed or interrupted run leaves the previous directory (or none), never a half-written one.
    Files in an existing out_dir that this function does not write (measurement.json, routing
    traces) are carried over. Returns out_dir.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the report dir is meant to be shared
        _write_files(tmp, result, scenario, measurement=measurement)
        _carry_over(out_dir, tmp)
        (tmp / "report.html").write_text(render_html(tmp), encoding="utf-8")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def render_report(out_dir: Path) -> Path:
    """Re-render out_dir/report.html from the saved JSON/CSV (no search); atomic file replace."""
    out_dir = Path(out_dir)
    for name in ("result.json", "plans.csv"):
        if not (out_dir / name).is_file():
            raise ValueError(f"{out_dir}: no {name} here; run `planner search --out {out_dir}` first")
    html = render_html(out_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=".report.html.", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        os.replace(tmp_name, out_dir / "report.html")
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
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


def _carry_over(out_dir: Path, tmp: Path) -> None:
    """Keep files a previous run or the executor left in out_dir (e.g. measurement.json)."""
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if path.name not in OUTPUT_FILES and not (tmp / path.name).exists() and not path.name.startswith("."):
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, tmp / path.name)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with renames only (each atomic); the old tree is deleted last."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "dir")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
