"""Output safety on success: files get umask modes (not mkstemp's 0600), the user's other files and
dotfiles in the output directory stay, no temp file is left, and temps a killed run left are
cleaned by the next one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_contract import invoke
from conftest import REPO

from planner.hardware import datasheet_profile, load_profile
from planner.profiler import write_profile
from planner.scenario import cluster_preset

TINY = REPO / "scenarios" / "tiny-dense_cpu4.toml"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_search_outputs_have_umask_modes_and_keep_the_users_files(tmp_path: Path, umask_022: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".hidden").write_text("dot")
    (out / "mine.txt").write_text("mine")
    (out / "sub").mkdir()
    res = invoke(["search", TINY, "--out", out])
    assert res.exit_code == 0, res.output
    for name in ("plans.csv", "plan.json", "result.json", "trace.json", "report.html"):
        assert _mode(out / name) == umask_022, name
    assert (out / ".hidden").read_text() == "dot" and (out / "mine.txt").read_text() == "mine" and (out / "sub").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".planner-tmp")]
    res = invoke(["report", out])
    assert res.exit_code == 0 and _mode(out / "report.html") == umask_022
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing beside the output dir


def test_trace_and_profile_files_have_umask_modes(tmp_path: Path, umask_022: int) -> None:
    trace = tmp_path / "deep" / "t.json"
    res = invoke(["estimate", TINY, "--pp", "2", "--dp", "2", "--trace", trace])
    assert res.exit_code == 0, res.output
    assert _mode(trace) == umask_022 and sorted(p.name for p in trace.parent.iterdir()) == ["t.json"]
    profile = tmp_path / "p.json"
    write_profile(datasheet_profile(cluster_preset("dgx-h100")), profile)
    assert _mode(profile) == umask_022 and load_profile(profile).name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "p.json"]


def test_a_killed_runs_temps_are_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: its temps are stale
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".planner-tmp-{pid}-deadbeef"
    stale.mkdir()
    (stale / "report.html").write_text("x" * 1000)
    live = out / f".planner-tmp-{os.getpid()}-cafe0000"  # this process's own: kept
    live.mkdir()
    res = invoke(["search", TINY, "--out", out])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and live.exists()
