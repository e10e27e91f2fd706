"""The verbs of `planner`: each parses, calls one public function and prints a table (app.py is the plumbing)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from planner.scenario import CLUSTER_PRESETS, GPU_PRESETS
from planner.scenario import PRESETS, count_params
from planner.cli.app import app, console, default_scenario, fail, scenario_or_default, user_errors
from planner.scenario import Scenario, load_scenario

@app.command()
def models() -> None:
    """List the built-in model presets."""
    table = Table("preset", "layers", "hidden", "heads/kv", "experts (top-k)", "params", "active", title="models")
    for name, spec in PRESETS.items():
        total, active = count_params(spec)
        experts = f"{spec.num_local_experts} ({spec.num_experts_per_tok})" if spec.is_moe else "-"
        table.add_row(name, str(spec.num_hidden_layers), str(spec.hidden_size),
                      f"{spec.num_attention_heads}/{spec.kv_heads}", experts, _human(total), _human(active))
    console.print(table)


@app.command()
def clusters() -> None:
    """List the built-in cluster and GPU presets."""
    table = Table("preset", "gpu", "gpus/node", "nvlink domain", "intra GB/s", "inter GB/s", title="clusters")
    for name, c in CLUSTER_PRESETS.items():
        net = c["network"]
        table.add_row(name, c["gpu"]["name"], str(c["gpus_per_node"]), str(net["nvlink_domain"] or c["gpus_per_node"]),
                      f"{net['intra_node_gbs']:g}", f"{net['inter_node_gbs']:g}")
    console.print(table)
    gpus = Table("gpu", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM GiB", "HBM GB/s", title="GPUs (dense datasheet peaks)")
    for name, g in GPU_PRESETS.items():
        fp8 = g.peak_tflops.get("fp8")
        gpus.add_row(name, f"{g.peak_tflops['bf16']:g}", f"{fp8:g}" if fp8 else "-", f"{g.memory_gib:g}",
                     f"{g.memory_bandwidth_gbs:g}")
    console.print(gpus)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


@app.command()
def check(scenario: Annotated[Path | None, typer.Argument(help="scenario TOML (default: the embedded one)")] = None) -> None:
    """Validate a scenario file and print what it resolves to."""
    with user_errors():
        sc = scenario_or_default(scenario)
    m, c, j = sc.model, sc.cluster, sc.job
    total, active = count_params(m)
    console.print(f"[bold]{sc.name}[/bold]: ok")
    console.print(f"model   {m.name}: {m.num_hidden_layers} layers, hidden {m.hidden_size}, "
                  f"{_human(total)} params ({_human(active)} active)")
    console.print(f"cluster {c.name}: {c.num_nodes} x {c.gpus_per_node} {c.gpu.name} = {c.world_size} GPUs, "
                  f"NVLink domain {c.nvlink_domain}, {c.network.intra_node_gbs:g}/{c.network.inter_node_gbs:g} GB/s")
    console.print(f"job     seq {j.seq_len}, global batch {j.global_batch}, {j.precision.value}, {j.optimizer.kind.value}")


# -- verbs added by later modules register below this line (keep each body short) --


@app.command()
def search(
    scenario: Annotated[Path | None, typer.Argument(help="scenario TOML (default: the embedded one)")] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="plans to show (default: [search] top_k)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output dir (default reports/<scenario>)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="hardware profile JSON (default: datasheet)")] = None,
    routing: Annotated[Path | None, typer.Option("--routing", help="routing trace JSON for expert placement")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (ranked plans) and nothing else")] = False,
) -> None:
    """Search every valid parallel layout; print the best plans and write plans.csv, plan.json, report.html."""
    from planner.graph import prefetch_graph

    with user_errors():
        sc = scenario_or_default(scenario)
        # a cache miss starts tracing now, beside the imports below (graph/cache.py)
        with prefetch_graph(sc.model, seq_len=sc.job.seq_len) or nullcontext() as tracing:
            from planner.cli.search import result_json, run_search

            out_dir, k = out or Path("reports") / sc.name, top or sc.search.top_k
            # --json: stdout carries the object alone; tables and progress go to a silent console
            shown = Console(quiet=True) if as_json else console
            result = run_search(sc, top=k, out=out_dir, profile=profile, routing_trace=routing, console=shown,
                                prefetch=tracing)
    if as_json:
        typer.echo(result_json(result, sc, top=k, out=out_dir))
    if result.best is None:
        fail(result.nothing_fits or "nothing fits")


@app.command()
def graph(
    scenario: Annotated[Path | None, typer.Argument(help="scenario TOML (or use --model)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="preset, HF config.json or pkg.module:factory")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="tokens per sequence to trace")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Trace the model on the meta device and print its layers: params, FLOPs and activations per token."""
    import json

    from planner.graph import graph_for, graph_summary

    with user_errors():
        summary = graph_summary(graph_for(scenario, model=model, seq_len=seq_len))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table("layer", "kind", "params", "fwd FLOP/tok", "bwd FLOP/tok", "act B/tok", "act B/tok flash",
                  title=f"{summary['name']} (seq {summary['seq_len']}, {summary['num_ops']} ops)")
    for r in summary["layers"]:
        table.add_row(r["name"], r["block_kind"], _human(r["params"]), _human(r["fwd_flops_per_token"]),
                      _human(r["bwd_flops_per_token"]), _human(r["saved_bytes_per_token"]),
                      _human(r["saved_bytes_flash_per_token"]))
    table.add_row("total", "", _human(summary["params"]), _human(summary["fwd_flops_per_token"]),
                  _human(summary["train_flops_per_token"] - summary["fwd_flops_per_token"]),
                  _human(summary["saved_bytes_per_token"]), "", style="bold")
    console.print(table)


@app.command()
def run(
    plan: Annotated[Path, typer.Argument(help="plan JSON (from `planner search --out`)")],
    scenario: Annotated[Path | None, typer.Option(help="scenario TOML (default: the one the plan was searched for)")] = None,
    nproc: Annotated[int | None, typer.Option(min=1, help="processes per node (default: plan ranks / nnodes)")] = None,
    nnodes: Annotated[int, typer.Option(min=1)] = 1,
    node_rank: Annotated[int, typer.Option(min=0)] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of node 0 (multi-node)")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 10,
    out: Annotated[Path | None, typer.Option(help="output directory (default: the plan's directory)")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="save a DCP checkpoint every K steps")] = 0,
    resume_from: Annotated[Path | None, typer.Option(help="checkpoint dir of an earlier run (any plan)")] = None,
    max_restarts: Annotated[int, typer.Option(min=0, help="torchrun restarts after a failed rank")] = 0,
    data: Annotated[Path | None, typer.Option(help="plain text file instead of synthetic tokens")] = None,
    profile: Annotated[Path | None, typer.Option(help="hardware profile for the prediction (default: datasheet)")] = None,
) -> None:
    """Train the plan with torchrun (gloo on CPU, NCCL on CUDA) and write measurement.json."""
    from executor import Launch, RunOptions, run_plan
    from planner.cli.run import scenario_for_run
    from planner.plan import Plan
    from planner.report.output import check_output_dir

    out_dir = out or plan.parent
    with user_errors():
        the_plan = Plan.load(plan, flag="plan")
        sc = scenario_for_run(plan, load_scenario(scenario) if scenario else None, default=default_scenario())
        check_output_dir(out_dir, flag="--out")
        options = RunOptions(steps=steps, checkpoint_every=checkpoint_every, resume_from=resume_from, data_path=data,
                             checkpoint_dir=out_dir / "checkpoints" if checkpoint_every else None)
        launch = Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                        max_restarts=max_restarts)
        try:
            m = run_plan(the_plan, sc, out_dir=out_dir, options=options, launch=launch)
        except RuntimeError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
    console.print(f"{out_dir}/measurement.json: loss {m.losses[0]:.4f} -> {m.losses[-1]:.4f} over {m.steps} steps")
    _print_comparison(the_plan, sc, m, profile=profile, out_dir=out_dir)


def _print_comparison(plan, sc: Scenario, measurement, *, profile: Path | None, out_dir: Path) -> None:
    """Predicted vs measured for the run just made; refresh the report when out_dir holds one."""
    from planner.cli import estimate as estimate_cli
    from planner.report import compare
    from planner.report import render_report

    table = Table("quantity", "predicted", "measured", "error", title="predicted vs measured")
    try:
        est = estimate_cli.run_estimate(sc, plan, profile=profile, timeline=False)
    except ValueError as err:  # e.g. launched on fewer ranks than the scenario's cluster
        console.print(f"(no prediction: {err})")
        est = None
    for row in compare(est, measurement) if est is not None else []:
        table.add_row(row.quantity, f"{row.predicted:.4g}", f"{row.measured:.4g}", f"{row.error:+.0%}")
    console.print(table)
    if (out_dir / "result.json").is_file():
        console.print(f"updated {render_report(out_dir)}")


@app.command()
def profile(
    out: Annotated[Path, typer.Option("--out", help="profile JSON to write, e.g. profiles/this-machine.json")],
    nproc: Annotated[int, typer.Option(help="local ranks for the link sweep (1 = kernels only)")] = 2,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    scenario: Annotated[list[Path] | None, typer.Option(help="also time this scenario's layer shapes")] = None,
    quick: Annotated[bool, typer.Option(help="reduced sweep (seconds, for tests)")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads per rank (default: cores / nproc)")] = None,
    links: Annotated[bool, typer.Option("--links", help="also measure every node pair (and rail) into a link table")] = False,
) -> None:
    """Measure kernels and links on this machine (torch.distributed for links) into a profile."""
    from planner.profiler import run as profiler

    with user_errors():
        config = profiler.config_from_cli(out=out, nproc=nproc, device=device, scenarios=scenario or [], quick=quick,
                                         threads=threads, links=links)
        with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
            measured = profiler.profile_machine(config, progress=bar)
        if measured is None:  # a torchrun rank other than 0
            return
        saved = profiler.write_profile(measured, out)
    table = Table("quantity", "value", title=f"{out} ({saved.device.name})")
    for row in profiler.summary_rows(saved):
        table.add_row(*row)
    console.print(table)


@app.command()
def estimate(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML")],
    plan: Annotated[Path | None, typer.Option("--plan", help="plan JSON (else build one from the flags)")] = None,
    tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1, etp: int = 1,
    dp: Annotated[int | None, typer.Option(help="default: world / (tp*pp*cp)")] = None,
    vp: Annotated[int, typer.Option(help="virtual stages per pipeline rank (interleaved 1F1B)")] = 1,
    mbs: Annotated[int, typer.Option(help="micro-batch size")] = 1,
    zero: Annotated[int, typer.Option(help="ZeRO stage 0-3 (3 = FSDP)")] = 0,
    recompute: Annotated[str, typer.Option(help="none | selective | full")] = "none",
    schedule: Annotated[str | None, typer.Option(help="gpipe | 1f1b | interleaved-1f1b | zero-bubble")] = None,
    sp: Annotated[bool | None, typer.Option("--sp/--no-sp", help="sequence parallel (default: on when tp > 1)")] = None,
    cp_kind: Annotated[str, typer.Option(help="ring | ring-bidirectional | all-to-all | hybrid")] = "ring",
    cp_a2a: Annotated[int, typer.Option(help="all-to-all ranks of a hybrid CP group")] = 1,
    offload: Annotated[str, typer.Option(help="state:tier,... e.g. optimizer:host,parameters:nvme")] = "",
    vocab_parallel: Annotated[bool, typer.Option("--vocab-parallel/--no-vocab-parallel")] = False,
    fp8_recipe: Annotated[str | None, typer.Option(help="delayed | current | mxfp8 (precision fp8)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="hardware profile JSON (default: datasheet)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    trace: Annotated[Path | None, typer.Option("--trace", help="write a Chrome-trace timeline here")] = None,
) -> None:
    """Predict step time, MFU and per-stage memory of one plan (cost model, no GPU needed)."""
    from planner.cli import estimate as ec
    from planner.plan import Plan

    from planner.report.output import check_output_file

    with user_errors():
        if trace is not None:
            check_output_file(trace, flag="--trace")
        sc = load_scenario(scenario)
        knobs = ec.PlanKnobs(vp=vp, mbs=mbs, zero=zero, recompute=recompute, schedule=schedule, sp=sp, cp_kind=cp_kind,
                             cp_a2a=cp_a2a, offload=offload, vocab_parallel=vocab_parallel, fp8_recipe=fp8_recipe)
        the_plan = Plan.load(plan, flag="--plan") if plan is not None else ec.plan_from_flags(
            ec.dims_from_flags(tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, dp=dp, world=sc.cluster.world_size), knobs)
        est = ec.run_estimate(sc, the_plan, profile=profile, timeline=trace is not None, plan_file=plan)
        if trace is not None:
            ec.write_trace(est, trace)
    typer.echo(ec.estimate_json(est, the_plan)) if as_json else ec.print_estimate(est, the_plan, console=console)


@app.command()
def export(
    plan: Annotated[Path, typer.Argument(help="plan JSON (from `planner search --out`)")],
    fmt: Annotated[str, typer.Option("--format", help="torchtitan (job-config TOML) | megatron (arguments)")],
    scenario: Annotated[Path | None, typer.Option(help="scenario TOML (default: the search's, from result.json)")] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Write the plan as a framework's own options; what the framework cannot express is listed."""
    from planner.cli.export import run_export

    with user_errors():
        text = run_export(plan, fmt=fmt, scenario=scenario, out=out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}", err=True)


@app.command()
def report(out_dir: Annotated[Path, typer.Argument(help="directory a `planner search --out` wrote")]) -> None:
    """Re-render DIR/report.html from DIR's saved results (plans.csv, result.json); no search."""
    from planner.report import render_report

    with user_errors():
        path = render_report(out_dir)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def frameworks() -> None:
    """List the framework runtimes a scenario can name with [job] framework = "NAME"."""
    from planner.scenario.runtime import frameworks as registry

    table = Table("framework", "attention", "grad reduce", "TP overlap", "DP overlap", "CUDA graphs",
                  "grouped GEMM", "EP dispatcher", "fusion", "description", title="framework runtimes")
    for name, rt in registry().items():
        table.add_row(name, rt.attention.value, rt.grad_reduce.value, _yes(rt.tp_comm_overlap), _yes(rt.dp_comm_overlap),
                      _yes(rt.cuda_graphs), _yes(rt.grouped_gemm), rt.ep_dispatcher.value, rt.fusion.value,
                      rt.description)
    console.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


@app.command()
def validate(
    csv: Annotated[Path, typer.Argument(help="CSV with the columns of published_runs.csv")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    loso: Annotated[bool, typer.Option("--loso", help="also report the leave-one-source-out error")] = False,
) -> None:
    """Predict every published run in CSV with the cost model and print measured vs predicted."""
    from planner.cli import validate as va

    with user_errors():
        result = va.validate_csv(csv, loso=loso)
    typer.echo(va.result_json(result)) if as_json else va.print_result(result, console=console)
