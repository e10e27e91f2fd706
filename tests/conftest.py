"""Shared fixtures: repo paths, scenario writers, and a CLI runner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the graph cache (planner/graph/cache.py) of this test session: never the user's ~/.cache
os.environ.setdefault("PLANNER_CACHE_DIR", tempfile.mkdtemp(prefix="planner-test-cache-"))

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write TOML text to a scenario file in tmp_path and return its path."""

    def _write(text: str, name: str = "s.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
