"""The README's quick tour, verbatim and in order, as a new user runs it; and every top plan the
search gives for a tiny scenario passes the executor's own launch check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from executor.launch import Launch, check_launch
from planner.graph import extract_graph
from planner.hardware import datasheet_profile, load_profile
from planner.scenario import load_scenario
from planner.search import search

REPO = Path(__file__).resolve().parents[2]


def tour_commands() -> list[str]:
    """The shell lines of the README's "Quick tour" block, as written (bash drops the comments)."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_tour_block_is_found() -> None:
    commands = tour_commands()
    assert commands[0].startswith("planner ") and any(c.startswith("planner run ") for c in commands)


@pytest.fixture
def fresh_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory laid out as a clone (scenarios/, profiles/), `planner` on PATH running this
    checkout's code, and a private graph cache."""
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("scenarios", "profiles"):
        shutil.copytree(REPO / name, work / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "planner"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m planner "$@"\n')
    shim.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
                        "PLANNER_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return work, env


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_quick_tour_runs_verbatim(fresh_clone) -> None:
    work, env = fresh_clone
    tiny_plan = None
    for command in tour_commands():
        done = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if command.startswith("planner search") and "--out reports/tiny" in command:
            tiny_plan = (work / "reports/tiny/plan.json").read_text()
    # `planner run` (4 gloo ranks) measured the search's plan and left the search's plan.json alone
    measured = json.loads((work / "reports/tiny/measurement.json").read_text())
    assert measured["world_size"] == 4 and len(measured["losses"]) == 10
    assert tiny_plan is not None and (work / "reports/tiny/plan.json").read_text() == tiny_plan


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("tiny-*.toml")), ids=lambda p: p.stem)
def test_search_never_emits_a_plan_the_executor_refuses(path: Path) -> None:
    scenario = load_scenario(path)
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len)
    for profile in (None, REPO / "profiles/cpu-2core.json"):
        hw = datasheet_profile(scenario.cluster) if profile is None else load_profile(profile)
        result = search(graph, scenario, hw=hw, top_k=10)
        assert result.top
        for cand in result.top:
            assert check_launch(cand.plan, scenario, launch=Launch()) == scenario.cluster.world_size
