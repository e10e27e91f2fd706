"""Inputs real configs use (issue 13, item 8) and stats a reader can add up (item 9)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from planner.graph import extract_graph, graph_for
from planner.hardware import datasheet_profile
from planner.scenario import load_hf_config, load_scenario, scenario_from_dict
from planner.search import search
from planner.search.counts import has_layout

REPO = Path(__file__).resolve().parents[2]


def test_nemotron_relu2_is_squared_relu(tmp_path: Path) -> None:
    config = {"architectures": ["NemotronForCausalLM"], "hidden_size": 64, "intermediate_size": 256,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
              "hidden_act": "relu2", "max_position_embeddings": 512}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec = load_hf_config(path)
    assert spec.hidden_act.value == "relu2" and not spec.hidden_act.gated
    graph = extract_graph(spec, seq_len=32)
    assert graph.num_params > 0
    from planner.graph.transformer import activation  # the canonical model's activation

    x = torch.tensor([-2.0, 0.5, 3.0])
    assert activation(spec.hidden_act, x).tolist() == [0.0, 0.25, 9.0]


def _inline(gpu: dict, *, precision: str = "bf16", seq: int = 2048, model: str = "llama3-8b") -> dict:
    return {"model": {"preset": model}, "cluster": {"name": "lab", "gpu": gpu, "gpus_per_node": 8, "num_nodes": 1,
                                                    "network": {"intra_node_gbs": 450, "inter_node_gbs": 50}},
            "job": {"seq_len": seq, "global_batch": 16, "precision": precision}}


def test_fp16_runs_at_the_bf16_rate_on_an_inline_gpu_without_an_fp16_peak() -> None:
    gpu = {"name": "my-gpu", "peak_tflops": {"bf16": 400}, "memory_gib": 80, "memory_bandwidth_gbs": 2000}
    sc = scenario_from_dict(_inline(gpu, precision="fp16"), base_dir=REPO, name="fp16", source="t.toml")
    hw = datasheet_profile(sc.cluster)
    assert hw.peak_flops(sc.job.precision) == hw.peak_flops(sc.job.precision.__class__("bf16")) == 400e12


def test_rope_beyond_max_positions_warns_and_learned_positions_refuse() -> None:
    gpu = {"name": "g", "peak_tflops": {"bf16": 400}, "memory_gib": 80, "memory_bandwidth_gbs": 2000}
    with pytest.warns(UserWarning, match="job.seq_len: 16384 exceeds max_position_embeddings=8192"):
        sc = scenario_from_dict(_inline(gpu, seq=16384), base_dir=REPO, name="long", source="t.toml")
    assert extract_graph(sc.model, seq_len=sc.job.seq_len).seq_len == 16384
    with pytest.raises(ValueError, match="job.seq_len: 4096 exceeds the learned position table"):
        scenario_from_dict(_inline(gpu, seq=4096, model="gpt3-350m"), base_dir=REPO, name="gpt", source="t.toml")


def test_factory_with_float_example_inputs_traces(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "float_lm.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)), "
        "(torch.randn(2, 8, 16),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        graph = graph_for(None, model="float_lm:build", seq_len=8)
    finally:
        sys.modules.pop("float_lm", None)
    assert graph.num_params == 16 * 32 + 32 + 32 * 16 + 16


def test_gpu_count_no_axis_takes_names_the_factor_and_the_nearest_counts(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text('[model]\npreset = "llama3.1-405b"\n[cluster]\npreset = "gb200-nvl72"\nnum_nodes = 24840\n'
                    '[job]\nseq_len = 8192\nglobal_batch = 2048\n')
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    line = result.output.strip().splitlines()[-1]
    assert "no valid layout for 99,360 GPUs" in line and "leaving a factor 3,105 for pp" in line
    assert "nearest GPU counts that work: 99,328 GPUs (24,832 nodes) or 100,352 GPUs (25,088 nodes)" in line
    target = load_scenario(path).plan_target()
    assert has_layout(99_328, target) and has_layout(100_352, target) and not has_layout(99_360, target)
    assert not any(has_layout(n, target) for n in range(99_332, 100_352, 4))


def test_search_stats_add_up_and_the_table_has_no_negative_zero() -> None:
    sc = load_scenario(REPO / "scenarios/tiny-dense_cpu4.toml")
    result = search(extract_graph(sc.model, seq_len=sc.job.seq_len), sc, hw=datasheet_profile(sc.cluster))
    s = result.stats
    assert s.enumerated == s.invalid + s.pruned + (s.costed - s.tuned)
    assert s.costed == sum(c.estimate is not None for c in result.candidates)
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shown = runner.invoke(app, ["search", str(REPO / "scenarios/tiny-dense_cpu4.toml"), "--out", "/tmp/t13-stats"])
    assert shown.exit_code == 0 and "-0.00" not in shown.output
    assert f"= {s.invalid:,} invalid + {s.pruned:,} pruned + {s.costed - s.tuned:,} costed" in shown.output
