"""Inputs that once made the process grow until the OOM killer stopped it (CI: 24 GB resident in
test_properties.py): each is refused with the one-line error (exit 2) inside a 3 GiB address space.

- a plan with dims.pp = 10**12: plan validity built the even block split, one list entry per
  pipeline chunk, before noticing the degrees do not fit (plan/validity.py);
- a model whose traced graph is O(layers x experts) past any memory: 10**6 experts, or 16M layers
  (scenario/load.graph_size_problem, checked before tracing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 3 * 2**30
TINY = '[model]\npreset = "tiny-moe"\n{extra}\n[cluster]\npreset = "cpu-local"\n[job]\nseq_len = 128\nglobal_batch = 8\n'


def _run_capped(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m planner ARGS` under RLIMIT_AS: a leak fails fast (MemoryError, exit 1) instead of eating the host."""
    code = ("import resource, runpy, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))\n"
            f"sys.argv = ['planner', *{args!r}]\n"
            "runpy.run_module('planner', run_name='__main__')\n")
    env = os.environ | {"PYTHONPATH": str(REPO), "PLANNER_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _assert_one_line(done: subprocess.CompletedProcess, *, contains: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines


def test_a_plan_with_a_trillion_pipeline_stages_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TINY.format(extra=""))
    (tmp_path / "plan.json").write_text(json.dumps({"dims": {"dp": 4, "pp": 10**12}}))
    done = _run_capped(["estimate", "s.toml", "--plan", "plan.json", "--json"], tmp_path)
    _assert_one_line(done, contains="pp*virtual_stages = 1000000000000 exceeds num_hidden_layers")


@pytest.mark.parametrize(("extra", "field"), [("num_local_experts = 1000000", "model.num_local_experts"),
                                              ("num_hidden_layers = 16000000", "model.num_hidden_layers")])
def test_a_model_whose_graph_would_not_fit_memory_is_refused_before_tracing(tmp_path: Path, extra: str,
                                                                            field: str) -> None:
    (tmp_path / "s.toml").write_text(TINY.format(extra=extra))
    done = _run_capped(["search", "s.toml", "--out", "out"], tmp_path)
    _assert_one_line(done, contains=f"s.toml: {field}:")
    assert not (tmp_path / "out").exists()
