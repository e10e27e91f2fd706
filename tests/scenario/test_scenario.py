"""Scenario files: every shipped scenario loads; bad input gives one exact line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.scenario import count_params, load_hf_config
from planner.scenario import ScenarioError, load_scenario

from conftest import FIXTURES, SCENARIOS

GOOD = """
[model]
preset = "llama3-8b"
[cluster]
preset = "dgx-h100"
num_nodes = 2
[job]
seq_len = 4096
global_batch = 64
"""


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.cluster.world_size == sc.cluster.num_nodes * sc.cluster.gpus_per_node
    assert sc.job.seq_len > 0 and sc.model.num_hidden_layers > 0


def test_preset_fields_can_be_overridden(write_scenario) -> None:
    path = write_scenario(GOOD.replace('preset = "llama3-8b"', 'preset = "llama3-8b"\nnum_hidden_layers = 8'))
    sc = load_scenario(path)
    assert sc.model.num_hidden_layers == 8 and sc.model.hidden_size == 4096
    assert sc.cluster.world_size == 16


def test_cluster_network_override_merges_with_preset(write_scenario) -> None:
    text = GOOD + "\n[cluster.network]\ninter_node_gbs = 12.5\n"
    sc = load_scenario(write_scenario(text))
    assert sc.cluster.network.inter_node_gbs == 12.5
    assert sc.cluster.network.intra_node_gbs == 450


def test_heterogeneous_links_load() -> None:
    sc = load_scenario(SCENARIOS / "llama3-8b_hetero.toml")
    assert sc.cluster.network.node_overrides[0].node == 3
    assert sc.cluster.network.pair_overrides[0].nodes == (0, 1)


# Hugging Face config.json fixtures copied from the public model repositories
# (meta-llama/Meta-Llama-3-8B, mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen2-57B-A14B, deepseek-ai/DeepSeek-V3).
HF_EXPECTED = {
    "llama3-8b.json": (8.03e9, 8.03e9),
    "mixtral-8x7b.json": (46.7e9, 12.9e9),  # Jiang et al. 2024: 47B total, 13B active
    "qwen2-57b-a14b.json": (57.4e9, 14.2e9),  # Qwen2 report: 57B total, 14B active
    "deepseek-v3.json": (671e9, 37e9),  # DeepSeek-V3 report: 671B total, 37B active (no MTP)
}


@pytest.mark.parametrize("name", sorted(HF_EXPECTED))
def test_hf_config_loads_with_published_sizes(name: str) -> None:
    spec = load_hf_config(FIXTURES / "hf" / name)
    total, active = count_params(spec)
    want_total, want_active = HF_EXPECTED[name]
    assert abs(total / want_total - 1) < 0.02
    assert abs(active / want_active - 1) < 0.03


def test_hf_config_in_scenario_resolves_relative_path(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((FIXTURES / "hf" / "mixtral-8x7b.json").read_text())
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('preset = "llama3-8b"', 'hf_config = "cfg/config.json"'))
    sc = load_scenario(path)
    assert sc.model.num_local_experts == 8 and sc.model.name == "cfg"


def test_deepseek_layer_rules() -> None:
    spec = load_hf_config(FIXTURES / "hf" / "deepseek-v3.json")
    assert spec.uses_mla and not spec.is_moe_layer(2) and spec.is_moe_layer(3)
    assert spec.num_moe_layers == 58


# (scenario text transform, exact one-line error after "error: <path>: ")
BAD_INPUTS = {
    "unknown-model-field": (lambda t: t.replace('preset = "llama3-8b"', 'preset = "llama3-8b"\nnum_hidden_layer = 8'),
                            "model.num_hidden_layer: unknown field; remove it or check its spelling"),
    "unknown-model-preset": (lambda t: t.replace("llama3-8b", "llama9-1t"),
                             "model.preset: unknown model 'llama9-1t'; run `planner models` for the list"),
    "unknown-cluster-preset": (lambda t: t.replace("dgx-h100", "dgx-h900"),
                               "cluster.preset: unknown cluster 'dgx-h900'; run `planner clusters` for the list"),
    "missing-job-section": (lambda t: t.split("[job]")[0], "missing [job] section; add it (see scenarios/*.toml)"),
    "negative-seq-len": (lambda t: t.replace("seq_len = 4096", "seq_len = -1"),
                         "job.seq_len: Input should be greater than 0"),
    "wrong-type": (lambda t: t.replace("global_batch = 64", 'global_batch = "many"'),
                   "job.global_batch: Input should be a valid integer, unable to parse string as an integer"),
    "bad-precision": (lambda t: t + 'precision = "int4"\n',
                      "job.precision: Input should be 'bf16', 'fp16', 'fp8' or 'fp32'"),
    "missing-required": (lambda t: t.replace("seq_len = 4096\n", ""), "job.seq_len: required field is missing; add it"),
    "kv-heads": (lambda t: t.replace('preset = "llama3-8b"', 'preset = "llama3-8b"\nnum_key_value_heads = 5'),
                 "model: num_key_value_heads=5 must divide num_attention_heads=32"),
    "top-k": (lambda t: t.replace('preset = "llama3-8b"', 'preset = "mixtral-8x7b"\nnum_experts_per_tok = 9'),
              "model: num_experts_per_tok=9 must be in 1..num_local_experts=8"),
    "unknown-gpu": (lambda t: t.replace('preset = "dgx-h100"\nnum_nodes = 2',
                                        'gpu = "h900"\nnum_nodes = 1\ngpus_per_node = 8\nnetwork = { intra_node_gbs = 1, inter_node_gbs = 1 }'),
                    "cluster.gpu: unknown GPU 'h900'; known: a100-40gb, a100-80gb, h100-sxm, h100-hbm2e-500w, h800-sxm, h200, b200, gb200, mi250x, mi300x, cpu"),
    "gpus-cannot-be-laid-out": (lambda t: t.replace("num_nodes = 2", "num_nodes = 3") + "[search]\nfixed = { tp = 16 }\n",
                                "search.fixed: tp = 16 does not divide the cluster's 24 GPUs; change the fixed degrees or num_nodes"),
    "bad-axis": (lambda t: t + "[search]\nfixed = { xp = 2 }\n",
                 "search.fixed.xp: Input should be 'dp', 'tp', 'pp', 'cp', 'ep', 'etp' or 'edp'"),
    "node-override": (lambda t: t + "[cluster.network]\nnode_overrides = [{ node = 5, inter_node_gbs = 10 }]\n",
                      "cluster: network.node_overrides: node 5 >= num_nodes=2"),
    "preset-and-hf": (lambda t: t.replace('preset = "llama3-8b"', 'preset = "llama3-8b"\nhf_config = "x.json"'),
                      "model: give either preset or hf_config, not both"),
    "bad-toml": (lambda t: t.replace("[job]", "[job"), None),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case: str, write_scenario, tmp_path: Path) -> None:
    transform, expected = BAD_INPUTS[case]
    path = write_scenario(transform(GOOD))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    if expected is None:
        assert lines[0].startswith(f"error: {path}: not valid TOML")
    else:
        assert lines[0] == f"error: {path}: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # wrote nothing


def test_missing_file_and_hf_config(tmp_path: Path, write_scenario) -> None:
    result = CliRunner().invoke(app, ["check", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'none.toml'}: scenario file not found; pass an existing scenario file"
    path = write_scenario(GOOD.replace('preset = "llama3-8b"', 'hf_config = "missing.json"'))
    with pytest.raises(ScenarioError, match=r"missing.json: model.hf_config: Hugging Face config.json file not found"):
        load_scenario(path)


def test_bad_hf_json(tmp_path: Path, write_scenario) -> None:
    (tmp_path / "x.json").write_text("{not json")
    path = write_scenario(GOOD.replace('preset = "llama3-8b"', 'hf_config = "x.json"'))
    with pytest.raises(ScenarioError, match="x.json: model.hf_config: not valid JSON"):
        load_scenario(path)


def test_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\npreset='nope'\n[cluster]\npreset='dgx-h100'\n[job]\nseq_len=1\nglobal_batch=1\n")
    proc = subprocess.run([sys.executable, "-m", "planner", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_default_scenario_is_valid() -> None:
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert "llama3-70b" in result.stdout
