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
from planner.plan import (BalancePolicy, CpKind, Fp8Recipe, OffloadState, OffloadTier, ParallelDims, Plan, Recompute,
                          Schedule, ZeroStage)
from planner.report.export import ExportFormat, FrameworkConfig, export_plan
from planner.scenario import Precision, Scenario, load_scenario
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


def _keys(table: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a parsed TOML document: [quantize.linear.float8] recipe_name -> quantize.linear.float8.recipe_name."""
    out = set()
    for key, value in table.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def _megatron_words(exported: FrameworkConfig) -> list[str]:
    lines = [line.removesuffix("\\").strip() for line in exported.text.splitlines() if not line.startswith("#")]
    return shlex.split(" ".join(lines))


def _megatron_values(words: list[str]) -> dict[str, list[str]]:
    """Each flag's words up to the next flag (nargs='+' values are several words)."""
    out: dict[str, list[str]] = {}
    for w in words:
        if w.startswith("--"):
            flag = w
            out[flag] = []
        else:
            out[flag].append(w)
    return out


def test_torchtitan_fragment_uses_only_documented_options(best) -> None:
    sc, plan = best
    exported = export_plan(plan, sc, ExportFormat.TORCHTITAN)
    parsed = tomllib.loads(exported.text)  # the fragment is valid TOML
    keys = _keys(parsed)
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
    words = _megatron_words(exported)
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


# ---- issue 16's plan fields ---------------------------------------------------------------------

LONGDOCS = REPO / "scenarios/llama3-8b-longdocs_h100x64.toml"  # dense, bf16, [job.sequences] long-tail


@pytest.fixture(scope="module")
def longdocs() -> Scenario:
    return load_scenario(LONGDOCS)


def _fp8(sc: Scenario) -> Scenario:
    return sc.model_copy(update={"job": sc.job.model_copy(update={"precision": Precision.FP8})})


def _plan(**knobs) -> Plan:
    base = dict(dims=ParallelDims(dp=2, tp=4, pp=2, cp=4), micro_batch_size=1)
    return Plan(**(base | knobs))


def _both(plan: Plan, sc: Scenario) -> tuple[FrameworkConfig, FrameworkConfig, dict, dict[str, list[str]]]:
    titan, mega = export_plan(plan, sc, ExportFormat.TORCHTITAN), export_plan(plan, sc, ExportFormat.MEGATRON)
    parsed, values = tomllib.loads(titan.text), _megatron_values(_megatron_words(mega))
    assert _keys(parsed) <= TITAN, _keys(parsed) - TITAN
    assert set(values) <= MEGATRON, set(values) - MEGATRON
    return titan, mega, parsed, values


def _listed(exported: FrameworkConfig, start: str) -> bool:
    hits = [u for u in exported.unsupported if u.startswith(start)]
    assert all(f"# not expressible: {u}" in exported.text for u in hits)
    return bool(hits)


@pytest.mark.parametrize(("kind", "a2a", "comm"), [(CpKind.RING, 1, "p2p"), (CpKind.RING_BIDIRECTIONAL, 1, "p2p"),
                                                   (CpKind.ALL_TO_ALL, 1, "a2a"), (CpKind.HYBRID, 2, "a2a+p2p")])
def test_cp_kind_maps_to_megatron_comm_type_and_torchtitan_ring(longdocs, kind, a2a, comm) -> None:
    titan, mega, parsed, values = _both(_plan(cp_kind=kind, cp_a2a=a2a), longdocs)
    assert values["--cp-comm-type"] == [comm]
    if kind == CpKind.HYBRID:  # a2a level first, then the ring over the rest
        assert values["--hierarchical-context-parallel-sizes"] == ["2", "2"]
    else:
        assert "--hierarchical-context-parallel-sizes" not in values
    assert _listed(mega, "cp_kind") == (kind == CpKind.RING_BIDIRECTIONAL)
    # torchtitan: the zigzag ring passes KV shards rank to rank; it has no Ulysses nor two-way ring
    assert parsed["parallelism"]["context_parallel_rotate_method"] == "alltoall"
    assert parsed["parallelism"]["context_parallel_load_balancer"] == "headtail"
    assert _listed(titan, "cp_kind") == (kind != CpKind.RING)


def test_optimizer_offload_is_megatron_cpu_optimizer_and_torchtitan_fsdp_offload(longdocs) -> None:
    plan = _plan(zero_stage=ZeroStage.PARAMETERS, offload={OffloadState.OPTIMIZER: OffloadTier.HOST})
    titan, mega, parsed, values = _both(plan, longdocs)
    assert values["--optimizer-cpu-offload"] == [] and values["--optimizer-offload-fraction"] == ["1.0"]
    assert "--use-precision-aware-optimizer" in values and "--use-distributed-optimizer" in values
    assert not _listed(mega, "offload")
    # torchtitan's switch moves parameters, gradients and optimizer state together: written, and said so
    assert parsed["training"]["enable_cpu_offload"] is True
    assert _listed(titan, "offload optimizer -> host only")
    full = {s: OffloadTier.HOST for s in (OffloadState.OPTIMIZER, OffloadState.GRADIENTS, OffloadState.PARAMETERS)}
    titan = export_plan(_plan(zero_stage=ZeroStage.PARAMETERS, offload=full), longdocs, ExportFormat.TORCHTITAN)
    assert tomllib.loads(titan.text)["training"]["enable_cpu_offload"] is True and not _listed(titan, "offload")


def test_offload_megatron_cannot_express_is_listed(longdocs) -> None:
    plan = _plan(offload={OffloadState.OPTIMIZER: OffloadTier.NVME, OffloadState.GRADIENTS: OffloadTier.HOST,
                          OffloadState.ACTIVATIONS: OffloadTier.HOST})
    titan, mega, parsed, values = _both(plan, longdocs)
    assert "--optimizer-cpu-offload" not in values and "enable_cpu_offload" not in parsed["training"]
    for exported in (titan, mega):
        assert _listed(exported, "offload optimizer -> nvme") and _listed(exported, "offload activations -> host")
        assert _listed(exported, "offload gradients -> host")


def test_zero0_optimizer_offload_needs_the_distributed_optimizer(longdocs) -> None:
    mega = export_plan(_plan(offload={OffloadState.OPTIMIZER: OffloadTier.HOST}), longdocs, ExportFormat.MEGATRON)
    assert "--use-distributed-optimizer" in _megatron_values(_megatron_words(mega))
    assert _listed(mega, "zero_stage 0 with optimizer offload")


@pytest.mark.parametrize(("recipe", "megatron", "converter", "titan_recipe"), [
    (Fp8Recipe.DELAYED, "delayed", "float8", "tensorwise"), (Fp8Recipe.CURRENT, "tensorwise", "float8", "tensorwise"),
    (Fp8Recipe.MXFP8, "mxfp8", "mx", "mxfp8_cublas")])
def test_fp8_recipe_maps_to_each_framework(longdocs, recipe, megatron, converter, titan_recipe) -> None:
    titan, mega, parsed, values = _both(_plan(fp8_recipe=recipe), _fp8(longdocs))
    assert values["--fp8-recipe"] == [megatron] and values["--fp8-format"] == ["hybrid"] and "--bf16" in values
    assert parsed["model"]["converters"] == [f"quantize.linear.{converter}"]
    assert parsed["quantize"]["linear"][converter]["recipe_name"] == titan_recipe
    assert parsed["training"]["mixed_precision_param"] == "bfloat16"
    assert _listed(titan, "fp8_recipe delayed") == (recipe == Fp8Recipe.DELAYED)
    assert not _listed(mega, "fp8_recipe")


def test_vocab_parallel_is_listed_by_both(longdocs) -> None:
    for exported in _both(_plan(vocab_parallel=True), longdocs)[:2]:
        assert _listed(exported, "vocab_parallel")


@pytest.mark.parametrize("balance", list(BalancePolicy))
def test_packed_documents_and_balance(longdocs, balance) -> None:
    titan, mega, _, values = _both(_plan(balance=balance), longdocs)
    assert "--reset-attention-mask" in values and "--reset-position-ids" in values  # document masks
    assert _listed(titan, "job.sequences document masks")  # torchtitan: a model flavor, not the job config
    for exported in (titan, mega):
        assert _listed(exported, "balance") == (balance != BalancePolicy.NONE)
    no_docs = longdocs.model_copy(update={"job": longdocs.job.model_copy(update={"sequences": None})})
    mega = export_plan(_plan(), no_docs, ExportFormat.MEGATRON)
    assert "--reset-attention-mask" not in _megatron_values(_megatron_words(mega))


def _every_knob() -> list[Plan]:
    """Plans with every Plan field off its default (in two plans: hybrid CP and fp8 need different jobs)."""
    common = dict(micro_batch_size=2, virtual_stages=2, schedule=Schedule.INTERLEAVED_1F1B, zero_stage=ZeroStage.GRADIENTS,
                  recompute=Recompute.SELECTIVE, sequence_parallel=True, vocab_parallel=True,
                  offload={OffloadState.OPTIMIZER: OffloadTier.HOST, OffloadState.ACTIVATIONS: OffloadTier.NVME},
                  fp8_recipe=Fp8Recipe.MXFP8, balance=BalancePolicy.ZEPPELIN, blocks_per_stage=[4, 4, 4, 4, 4, 4, 4, 4],
                  rank_order=["tp", "dp", "cp", "pp"], expert_rank_order=["pp", "ep", "edp", "etp"],
                  expert_placement=[[0, 1]], expert_load=[[1.0, 1.0]],
                  device_mapping=[(r // 8, r % 8) for r in range(64)])
    dims = ParallelDims(dp=2, tp=2, pp=4, cp=4)
    return [Plan(dims=dims, cp_kind=CpKind.HYBRID, cp_a2a=2, **common),
            Plan(dims=dims, cp_kind=CpKind.ALL_TO_ALL, **common)]


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_no_plan_field_is_dropped_silently(longdocs, fmt) -> None:
    default, seen = Plan(), set()
    for plan in _every_knob():
        exported = export_plan(plan, _fp8(longdocs), fmt)
        emitted = _keys(tomllib.loads(exported.text)) if fmt == ExportFormat.TORCHTITAN else set(
            _megatron_values(_megatron_words(exported)))
        changed = [name for name in Plan.model_fields if getattr(plan, name) != getattr(default, name)]
        seen |= set(changed)
        for name in changed:
            written = exported.written.get(name, [])
            assert set(written) <= emitted, (name, set(written) - emitted)
            listed = [u for u in exported.unsupported if name in u.split(":")[0].replace(",", " ").split()]
            assert written or listed, f"{fmt}: plan field {name} neither written nor listed"
    assert seen == set(Plan.model_fields) - {"version"}  # the two plans move every field off its default
