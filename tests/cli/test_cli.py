"""Every shipped scenario through the CLI verbs that need no processes (Calculon's test.sh idea)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.scenario import PRESETS
from planner.scenario import load_scenario

from conftest import SCENARIOS

runner = CliRunner()
ALL = sorted(SCENARIOS.glob("*.toml"))


def _estimate_flags(path: Path) -> list[str]:
    """A plausible plan for each scenario: TP inside a node, PP for the rest of the model's size."""
    sc = load_scenario(path)
    tp = min(sc.cluster.gpus_per_node, 8) if sc.model.num_hidden_layers > 8 else 1
    while sc.model.num_attention_heads % tp or (sc.model.kv_heads % tp and tp % sc.model.kv_heads):
        tp //= 2
    pp = 4 if sc.model.num_hidden_layers >= 32 and sc.cluster.world_size >= 32 * tp else 1
    dp = sc.cluster.world_size // (tp * pp)
    while sc.job.global_batch % dp or sc.job.global_batch // dp < pp:  # 1F1B needs m >= pp
        dp //= 2
    cp = sc.cluster.world_size // (tp * pp * dp)
    return ["--tp", str(tp), "--pp", str(pp), "--cp", str(cp), "--dp", str(dp)]


def test_models_and_clusters_list_every_preset() -> None:
    out = runner.invoke(app, ["models"], terminal_width=200)
    assert out.exit_code == 0
    for name in PRESETS:
        assert name in out.stdout
    out = runner.invoke(app, ["clusters"], terminal_width=200)
    assert out.exit_code == 0 and "gb200-nvl72" in out.stdout and "mi300x" in out.stdout


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_check_and_estimate_every_scenario(path: Path) -> None:
    assert runner.invoke(app, ["check", str(path)]).exit_code == 0
    result = runner.invoke(app, ["estimate", str(path), *_estimate_flags(path), "--json"])
    assert result.exit_code == 0, result.output
    est = json.loads(result.stdout)
    assert est["step_time_s"] > 0 and 0 < est["mfu"] < 1 and est["peak_memory_gib"] > 0
    assert set(est["time_breakdown_s"]) >= {"compute", "bubble", "exposed_comm", "optimizer"}


@pytest.mark.parametrize("verb", ["search", "estimate", "graph", "profile", "run", "report", "models", "clusters", "check",
                                  "frameworks", "validate"])
def test_every_verb_explains_itself(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) > 3


def test_graph_json_for_a_tiny_scenario() -> None:
    result = runner.invoke(app, ["graph", str(SCENARIOS / "tiny-moe_cpu4.toml"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["params"] > 0 and any(layer["block_kind"] == "moe" for layer in summary["layers"])
