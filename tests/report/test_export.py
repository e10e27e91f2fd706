"""`planner export`: the best plans of the GPT-3 and DeepSeek-V3 scenarios as torchtitan job-config
TOML and Megatron-LM arguments, every option checked against the cited versions' own names
(tests/fixtures lists them, extracted from the tagged sources)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.report.export import ExportFormat, export_plan
from planner.scenario import load_scenario
from planner.search import search

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures"


def _names(file: str) -> set[str]:
    return {line.strip() for line in (FIXTURES / file).read_text().splitlines() if line and not line.startswith("#")}


TITAN = _names("torchtitan_v0.2.2_options.txt")  # "section.key"
MEGATRON = _names("megatron_core_v0.15.0_flags.txt")  # "--flag"


@pytest.fixture(scope="module", params=["gpt3-175b_a100x1024", "deepseek-v3_h800x2048"])
def best(request):
    sc = load_scenario(REPO / f"scenarios/{request.param}.toml")
    graph = extract_graph(sc.model, seq_len=sc.job.seq_len)
    result = search(graph, sc, hw=datasheet_profile(sc.cluster), top_k=3)
    return sc, result.best.plan


def test_torchtitan_fragment_uses_only_documented_options(best) -> None:
    sc, plan = best
    exported = export_plan(plan, sc, ExportFormat.TORCHTITAN)
    parsed = tomllib.loads(exported.text)  # the fragment is valid TOML
    keys = {f"{section}.{key}" for section, values in parsed.items() for key in values}
    assert keys <= TITAN, keys - TITAN
    par, training = parsed["parallelism"], parsed["training"]
    d = plan.dims
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"], par["context_parallel_degree"]) == (
        d.tp, d.pp, d.cp)
    assert par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] == d.dp
    assert training["global_batch_size"] == sc.job.global_batch and training["seq_len"] == sc.job.seq_len
    assert parsed["activation_checkpoint"]["mode"] == plan.recompute.value
    if sc.model.is_moe:
        assert (par["expert_parallel_degree"], par["expert_tensor_parallel_degree"]) == (d.ep, d.etp)
    if plan.dims.pp > 1:
        assert par["pipeline_parallel_microbatch_size"] == plan.micro_batch_size
        chunks = par.get("module_fqns_per_model_part")
        if chunks is not None:  # every transformer block exactly once, in order
            blocks = [n for part in chunks for n in part if n.startswith("layers.")]
            assert blocks == [f"layers.{i}" for i in range(sc.model.num_hidden_layers)]
    for line in exported.unsupported:  # listed, not dropped: each shows in the file
        assert f"# not expressible: {line}" in exported.text


def test_megatron_arguments_use_only_documented_flags(best) -> None:
    sc, plan = best
    exported = export_plan(plan, sc, ExportFormat.MEGATRON)
    lines = [line.removesuffix("\\").strip() for line in exported.text.splitlines() if not line.startswith("#")]
    words = shlex.split(" ".join(lines))
    flags = [w for w in words if w.startswith("--")]
    assert set(flags) <= MEGATRON, set(flags) - MEGATRON
    value = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--") and not words[i + 1].startswith("--")}
    d = plan.dims
    assert (int(value["--tensor-model-parallel-size"]), int(value["--pipeline-model-parallel-size"]),
            int(value["--context-parallel-size"])) == (d.tp, d.pp, d.cp)
    assert int(value["--micro-batch-size"]) == plan.micro_batch_size
    assert int(value["--global-batch-size"]) == sc.job.global_batch
    assert ("--sequence-parallel" in flags) == plan.sequence_parallel
    assert ("--bf16" in flags) == (sc.job.precision.value == "bf16")
    if sc.model.is_moe:
        assert (int(value["--expert-model-parallel-size"]), int(value["--expert-tensor-parallel-size"])) == (d.ep, d.etp)
    if plan.virtual_stages > 1:
        assert int(value["--num-virtual-stages-per-pipeline-rank"]) == plan.virtual_stages
    if plan.blocks_per_stage is not None:
        layout = value["--pipeline-model-parallel-layout"].split("|")
        assert [s.count("t") for s in layout] == plan.blocks_per_stage
        assert layout[0].startswith("E") and layout[-1].endswith("L")
    if plan.expert_placement is not None:
        assert any(u.startswith("expert_placement") for u in exported.unsupported)


def test_export_verb_reads_the_search_directory(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tiny"
    searched = runner.invoke(app, ["search", str(REPO / "scenarios/tiny-moe_cpu4.toml"), "--out", str(out)])
    assert searched.exit_code == 0, searched.output
    done = runner.invoke(app, ["export", str(out / "plan.json"), "--format", "torchtitan"])
    assert done.exit_code == 0, done.output
    assert "[parallelism]" in done.output and tomllib.loads(done.output)
    bad = runner.invoke(app, ["export", str(out / "plan.json"), "--format", "deepspeed"])
    assert bad.exit_code == 2 and "--format: 'deepspeed' is not one of torchtitan, megatron" in bad.output
