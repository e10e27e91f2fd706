"""Framework runtimes as data: every shipped file loads and cites its facts; [job] picks one and
explicit fields override single facts; generic equals the JobSpec defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.scenario import JobSpec, ScenarioError, load_scenario
from planner.scenario.runtime import (
    DEFAULT_FRAMEWORK,
    RUNTIME_JOB_FIELDS,
    framework,
    frameworks,
    match_framework,
)

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "gpt3-175b_a100x1024.toml"


def test_every_runtime_file_loads_with_citations() -> None:
    table = frameworks()
    assert {"generic", "megatron-lm-2021", "megatron-core-0.8", "nemo-24.07", "megatron-bridge-25.11",
            "torchtitan-2024-12", "llm-foundry", "deepspeed-2021", "nemo-automodel"} <= set(table)
    for runtime in table.values():
        assert runtime.citations and all(len(c) > 20 for c in runtime.citations)


def test_generic_runtime_is_the_jobspec_default() -> None:
    job, generic = JobSpec(seq_len=8, global_batch=1), framework(DEFAULT_FRAMEWORK)
    for name in RUNTIME_JOB_FIELDS:
        assert getattr(job, name) == getattr(generic, name), name


def _scenario(tmp_path: Path, job_lines: str):
    text = SCENARIO.read_text().replace('precision = "bf16"', 'precision = "bf16"\n' + job_lines)
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def test_job_framework_fills_facts_and_explicit_fields_win(tmp_path: Path) -> None:
    sc = _scenario(tmp_path, 'framework = "megatron-lm-2021"')
    assert sc.job.framework == "megatron-lm-2021" and sc.job.attention == "eager"
    assert not sc.job.dp_comm_overlap and sc.job.grad_reduce_bytes == 2.0
    sc = _scenario(tmp_path, 'framework = "megatron-lm-2021"\nattention = "flash"\ndp_comm_overlap = true')
    assert sc.job.attention == "flash" and sc.job.dp_comm_overlap
    with pytest.raises(ScenarioError, match="unknown framework 'nope'"):
        _scenario(tmp_path, 'framework = "nope"')


@pytest.mark.parametrize(("text", "name"), [
    ("Megatron-LM (2021, commit 6985e589)", "megatron-lm-2021"),
    ("MegaScale (Megatron-LM 285068c8 based)", "megascale-2024"),
    ("Megatron-LM 285068c8 (baseline)", "megatron-lm-2023"),
    ("torchtitan + torch.compile (2025-06)", "torchtitan-2025-06"),
    ("Some new trainer 3000", "generic"),
])
def test_free_text_picks_the_runtime(text: str, name: str) -> None:
    assert match_framework(text).name == name


def test_frameworks_verb_lists_them() -> None:
    out = CliRunner().invoke(app, ["frameworks"], terminal_width=250)
    assert out.exit_code == 0
    for name in frameworks():
        assert name[:18] in out.stdout
