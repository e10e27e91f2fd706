"""SIGINT and SIGTERM during `planner search` (while it writes its outputs) and during
`planner run` (while the ranks train): the process exits, nothing is left behind (no temp file,
no half-written output, the earlier outputs intact) and no process keeps running.

Real processes: the CLI as a user starts it (`python -m planner`), torchrun and gloo ranks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_contract import snapshot
from conftest import REPO

from executor.launch import descendants

pytestmark = pytest.mark.slow
TINY = REPO / "scenarios" / "tiny-dense_cpu4.toml"
ENV = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _default_sigint() -> None:
    """A job started in the background of a non-interactive shell inherits SIGINT ignored (POSIX
    `sh`: asynchronous lists), and Python keeps it ignored; the user's terminal gives the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "planner", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(predicate, *, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".planner-tmp")]


def _staging(root: Path) -> bool:
    """The staged output directory exists: the search is over and the files are being written."""
    return any(p.is_dir() for p in _temps(root))


def _running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.fixture(scope="module")
def first_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished search's output directory (copied by each test)."""
    out = tmp_path_factory.mktemp("first") / "out"
    first = subprocess.run([sys.executable, "-m", "planner", "search", TINY, "--out", out], cwd=out.parent, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_search_writes_leaves_the_old_outputs(tmp_path: Path, sig: signal.Signals,
                                                           first_outputs: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_outputs, out)
    (out / ".mine").write_text("a dotfile of the user")
    before = snapshot(tmp_path)
    proc = _start(["search", TINY, "--out", out], tmp_path)
    _wait_for(lambda: _staging(out), timeout_s=300, proc=proc)  # it is writing the new outputs now
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig  # 130 / 143: interrupted, not crashed
    assert "Traceback" not in proc.stderr.read()
    assert not _temps(tmp_path)
    assert snapshot(tmp_path) == before  # the earlier outputs, byte for byte, and the dotfile


def test_signal_during_first_search_leaves_no_directory(tmp_path: Path) -> None:
    sig = signal.SIGTERM  # SIGINT takes the same path (the test above runs both)
    proc = _start(["search", TINY, "--out", tmp_path / "new" / "out"], tmp_path)
    _wait_for(lambda: _staging(tmp_path), timeout_s=300, proc=proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    assert list(tmp_path.iterdir()) == []  # neither out, nor the parent it created, nor a temp


@pytest.mark.distributed
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_run_stops_every_rank(tmp_path: Path, sig: signal.Signals) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"dims": {"dp": 2, "pp": 2}, "schedule": "gpipe"}')
    proc = _start(["run", plan, "--scenario", TINY, "--steps", "100000"], tmp_path)
    ranks: list[int] = []

    def ranks_started() -> bool:
        ranks[:] = [p for p in descendants(proc.pid) if "executor" in _cmdline(p)]
        return len(ranks) >= 5  # torchrun + its 4 ranks (each `-m executor`)

    _wait_for(ranks_started, timeout_s=300, proc=proc)
    tree = descendants(proc.pid)
    proc.send_signal(sig)  # to the planner process only, as `kill` does
    assert proc.wait(timeout=90) == 128 + sig
    deadline = time.monotonic() + 30
    while _running(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(tree), f"still running: {[_cmdline(p) for p in _running(tree)]}"
    assert not (tmp_path / "measurement.json").exists() and not _temps(tmp_path)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
