"""The cost model against published training runs, through `planner validate` (the product code).

tests/data/published_runs.csv is a copy of ../shared/validation/published_runs.csv (145 rows,
SOURCES.md there defines every column), so a clean clone runs this. Each row is mapped by
planner/scenario/published.py and priced exactly as `planner estimate` prices a plan; the row's
framework text picks a runtime file, never a rule of this test.
"""

from __future__ import annotations

import csv
from dataclasses import replace
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.cli.validate import RowClass, fitting_run, predict, row_classes, validate_csv
from planner.cost.compute import split_for
from planner.cost.memory import GIB, activation_bytes, in_flight, layer_activation, plan_memory
from planner.cost.schedule import chunk_layers
from planner.graph import extract_graph
from planner.plan import Recompute
from planner.scenario import JobSpec, OptimizerSpec, Precision, ShardingRuntime
from planner.scenario.published import PublishedRun, load_runs

CSV = Path(__file__).resolve().parent / "data" / "published_runs.csv"
KORTHIKANTI = Path(__file__).resolve().parents[1] / "bench" / "korthikanti_table5.py"
# Regression bounds on the whole table (the targets are MAPE 8%, max 25%, LOSO 12%; see
# the README's validation table for where the model stands and which classes are still off).
# These bounds guard what the model reaches today (MAPE 8.09%, max 63.6%, LOSO 8.6%); they are not the targets.
MAPE_LIMIT, MAX_LIMIT = 0.081, 0.64
FINE_GRAINED_LIMIT = 0.64  # fine-grained MoE rows (>= 64 experts): worst today GPT-OSS 120B (Bridge 25.11, B200)
CP_LIMIT = 0.37  # long-context rows (>= 16K tokens; worst today 36%, torchtitan CP 8 priced compiled as it ran: see the README)


@lru_cache(maxsize=1)
def _result():
    return validate_csv(CSV)


@lru_cache(maxsize=1)
def _runs() -> dict[str, PublishedRun]:
    return {r.row_id: r for r in load_runs(CSV)}


def test_every_row_is_counted_and_mapped() -> None:
    result = _result()
    assert len(result.rows) == 145
    assert result.mapped == 145, [(r.row_id, r.reason) for r in result.rows if r.reason]
    print("\n" + "\n".join(f"{s[:60]:60} n={n:3} MAPE {m:6.1%} max {x:6.1%}"
                           for s, (n, m, x) in result.by_source().items()))
    print(result.summary_line())
    assert result.mape <= MAPE_LIMIT
    assert result.max_error <= MAX_LIMIT


def test_row_classes_stay_within_their_bounds() -> None:
    """Fine-grained MoE rows and long-context rows, the classes the issue names, classed by the
    same rule `planner validate` prints its per-class table with."""
    runs, rows = _runs(), {r.row_id: r for r in _result().rows}
    for rid, run in runs.items():
        assert rows[rid].classes == row_classes(run)
        if RowClass.FINE_GRAINED_MOE in rows[rid].classes:
            assert rows[rid].error <= FINE_GRAINED_LIMIT, (rid, run.model, rows[rid].signed_error)
        if RowClass.LONG_CONTEXT in rows[rid].classes:
            assert rows[rid].error <= CP_LIMIT, (rid, run.model, rows[rid].signed_error)
    by_class = _result().by_class()
    assert by_class[RowClass.DENSE][0] + by_class[RowClass.MOE][0] == 145  # every row is dense or MoE
    qwen3_b200 = rows["146"].classes  # Qwen3-30B-A3B (128 experts), MXFP8, 8 GPUs
    assert {RowClass.FINE_GRAINED_MOE, RowClass.FP8, RowClass.SMALL_SCALE} <= set(qwen3_b200)
    assert RowClass.LONG_CONTEXT in rows["53"].classes and RowClass.DENSE in rows["53"].classes  # cp8, 256K


def test_cli_validate_ends_with_the_summary_line_and_lists_unmapped_rows(tmp_path: Path) -> None:
    with CSV.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    broken = rows[0] | {"row_id": "999", "gpu": "TPU v9"}  # no preset knows it: counted as 100% error
    small = tmp_path / "runs.csv"
    with small.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([rows[0], rows[23], broken])
    out = CliRunner().invoke(app, ["validate", str(small)], terminal_width=200)
    assert out.exit_code == 0, out.output
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("rows 3, mapped 2, MAPE ") and last.endswith(", max 100.0%")
    assert "unmapped: gpu: no preset for 'TPU v9'" in out.stdout
    assert "per class" in out.stdout
    data = json.loads(CliRunner().invoke(app, ["validate", str(small), "--json"]).stdout)
    assert data["mapped"] == 2 and len(data["rows"]) == 3
    assert sum(c["rows"] for name, c in data["by_class"].items() if name in ("dense", "moe")) == 2


def test_loso_reports_a_refit_error_on_a_subset(tmp_path: Path) -> None:
    lines = CSV.read_text().splitlines()
    small = tmp_path / "runs.csv"
    small.write_text("\n".join([lines[0], *lines[1:4], *lines[23:27], *lines[33:36]]) + "\n")
    result = validate_csv(small, loso=True)
    assert result.loso_mape is not None and result.loso_mape >= 0.0
    assert result.loso_mape < 0.5


def test_search_plausibility_flags_a100_plans_near_the_best_published() -> None:
    """A predicted GPT-3 175B plan on A100 at or above ~52% MFU carries the reason in its estimate."""
    run = _runs()["26"]  # GPT-3 175B, selective + SP: the model predicts ~50% MFU
    est = predict(run)
    assert est.implausible is None or "best published" in est.implausible
    from planner.cost.plausibility import implausibility
    from planner.scenario import GpuFamily

    assert implausibility(0.53, family=GpuFamily.A100, moe=False, fp8=False) is not None
    assert implausibility(0.50, family=GpuFamily.A100, moe=False, fp8=False) is None
    assert "above" in implausibility(0.60, family=GpuFamily.A100, moe=False, fp8=False)


def test_rows_choose_their_runtime_by_framework_text() -> None:
    runs = _runs()
    assert runs["1"].framework == "megatron-lm-2021" and runs["1"].scenario.job.attention == "eager"
    assert runs["11"].scenario.job.zero3_runtime == ShardingRuntime.DEEPSPEED_2021
    assert runs["33"].scenario.job.tp_comm_overlap and runs["33"].framework == "megatron-core-0.8"
    assert runs["47"].framework == "torchtitan-2024-12" and runs["47"].plan.micro_batch_size == 2
    assert runs["48"].scenario.job.fusion == "compiled"  # the row states torch.compile
    assert runs["53"].scenario.job.fusion == "compiled"  # "FSDP+CP + compile + Float8"
    assert runs["47"].scenario.job.fusion != "compiled"  # "technique: FSDP." (eager)
    assert runs["184"].scenario.job.grad_reduce_bytes == 2.0  # FSDP PURE mixed precision
    assert runs["160"].scenario.job.grad_reduce_bytes == 4.0
    assert runs["59"].scenario.cluster.gpu.name == "h100-hbm2e-500w"


def test_gradient_reduction_dtype_follows_megatron_by_default() -> None:
    assert JobSpec(seq_len=8, global_batch=1, precision=Precision.BF16).grad_reduce_bytes == 4.0
    assert JobSpec(seq_len=8, global_batch=1, precision=Precision.FP16).grad_reduce_bytes == 2.0
    run = _runs()["36"]
    fp32 = predict(run)
    bf16 = predict(_with_job(run, optimizer=OptimizerSpec(grad_reduce_bytes=2)))
    # ZeRO-1 moves fp32 gradients (reduce-scatter) and bf16 parameters (all-gather): 6 vs 4 bytes per
    # parameter; the per-bucket ring latency is the same in both, so the ratio sits a little below 1.5
    assert 1.35 < fp32.time_breakdown_s["dp"] / bf16.time_breakdown_s["dp"] <= 1.5
    assert fp32.step_time_s > bf16.step_time_s


def _with_job(run: PublishedRun, **update) -> PublishedRun:
    scenario = run.scenario.model_copy(update={"job": run.scenario.job.model_copy(update=update)})
    return PublishedRun(row_id=run.row_id, source=run.source, model=run.model, n_gpus=run.n_gpus,
                        measured_tokens_per_s_per_gpu=run.measured_tokens_per_s_per_gpu, framework=run.framework,
                        scenario=scenario, plan=run.plan)


def test_runtime_facts_change_zero3_tp_and_dp_exposure() -> None:
    """DeepSpeed-2021 ZeRO-3 re-gathers big layers for recompute and reduces on the compute
    stream; TP comm overlap hides TP traffic; a runtime that reduces after the backward exposes it."""
    run = _runs()["13"]
    deepspeed, fsdp = predict(run), predict(_with_job(run, zero3_runtime=ShardingRuntime.FSDP))
    assert deepspeed.time_breakdown_s["dp"] > fsdp.time_breakdown_s["dp"]
    assert deepspeed.step_time_s > 1.15 * fsdp.step_time_s
    run = _runs()["36"]
    overlapped, blocking = predict(run), predict(_with_job(run, tp_comm_overlap=False))
    assert overlapped.time_breakdown_s["tp"] == pytest.approx(blocking.time_breakdown_s["tp"])
    assert overlapped.time_breakdown_s["exposed_comm"] < blocking.time_breakdown_s["exposed_comm"]
    serial = predict(_with_job(run, dp_comm_overlap=False, param_gather_overlap=False))
    assert serial.time_breakdown_s["exposed_comm"] > overlapped.time_breakdown_s["exposed_comm"]


def test_korthikanti_table5_through_the_cli_beats_calculon() -> None:
    """8 cases, scenario and plan files only (scenarios/korthikanti2022): mean <= 3.5% (Calculon 3.65%)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("korthikanti_table5", KORTHIKANTI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    errors = [abs(p / m - 1) for m, p in module.table5_errors().values()]
    assert len(errors) == 8
    assert sum(errors) / len(errors) <= 0.035
    assert max(errors) <= 0.089


# Korthikanti et al. 2022, Fig. 1 per-GPU components (GiB) as transcribed in the CSV notes:
def test_unstated_recompute_nearest_to_fitting_when_none_fits() -> None:
    """Row 156 (Kimi K2, 256 H100, AutoModel) states no recompute and our memory model fits it
    under none of them: the row gets the recompute with the smallest predicted peak, not none."""
    run = _runs()["156"]
    assert not run.recompute_stated
    peaks = {}
    for recompute in Recompute:
        est = predict(replace(run, plan=run.plan.model_copy(update={"recompute": recompute})))
        assert not est.fits
        peaks[recompute] = est.peak_memory_bytes
    chosen = fitting_run(run).plan.recompute
    assert chosen == min(peaks, key=peaks.get) == Recompute.FULL
    stated = _runs()["24"]  # Korthikanti: recompute stated, kept as stated
    assert stated.recompute_stated and fitting_run(stated) is stated


# (row, params+optimizer, activations with SP + selective, activations with no recompute and no SP).
KORTHIKANTI_MEMORY = [("24", 45.5625, 9.5625, 59.25), ("26", 45.5625, 12.3515625, 66.84375),
                      ("28", 31.640625, 23.076171875, 114.0234375), ("30", 32.958984375, 26.5625, 131.25)]


@pytest.mark.parametrize(("row_id", "states_gib", "sel_gib", "none_gib"), KORTHIKANTI_MEMORY)
def test_memory_matches_korthikanti_components(row_id: str, states_gib: float, sel_gib: float,
                                                none_gib: float) -> None:
    """The paper's figure sums 34sbh/t (selective+SP) or sbh(10+24/t+5as/ht) (nothing) over the
    layers of the micro-batches the first stage keeps in flight (p for 1F1B, times
    1 + (p-1)/(pv) interleaved: Korthikanti Sec. 4.2.3), with eager (pre-FlashAttention) attention."""
    run = _runs()[row_id]
    job, plan = run.scenario.job, run.plan
    graph = extract_graph(run.scenario.model, seq_len=job.seq_len)
    m = plan.num_micro_batches(job.global_batch)
    split = split_for(plan, graph=graph, precision=job.precision, flash=False)
    counts = [Counter(layer.block_kind for layer in chunk) for chunk in chunk_layers(graph, plan)]
    terms = plan_memory(graph, plan, job=job, split=split, chunk_counts=counts, num_micro_batches=m, flash=False)[0]
    states = (terms["weights"] + terms["gradients"] + terms["optimizer"]) / GIB
    assert states == pytest.approx(states_gib, rel=0.10)
    assert terms["activations"] / GIB == pytest.approx(sel_gib, rel=0.10)
    plain = plan.model_copy(update={"recompute": "none", "sequence_parallel": False})
    split = split_for(plain, graph=graph, precision=job.precision, flash=False)
    per_layer = activation_bytes(layer_activation(graph, graph.blocks[0]), split=split, flash=False,
                                 recompute=Recompute.NONE)
    layers_per_stage = run.scenario.model.num_hidden_layers / plan.dims.pp
    total = per_layer * layers_per_stage * in_flight(plan, stage=0, num_micro_batches=m) / GIB
    assert total == pytest.approx(none_gib, rel=0.10)
