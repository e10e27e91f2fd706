"""Executor overhead vs a hand-written torch DDP loop, and predicted vs measured step time for four plans.

    python bench/bench_executor.py [--scenario scenarios/tiny-dense_cpu4.toml] [--steps 16] [--repeats 3]
                                   [--profile profiles/X.json] [--out reports/bench_executor]

Target (issue 8): the executor's DP-only step time is within 10% of plain DDP on the same model,
batch, micro-batching and optimizer. Both run under torchrun with gloo (CPU) or NCCL (CUDA).
Writes predicted_vs_measured.json (and .csv) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from executor import Launch, RunOptions, run_plan
from executor.data import global_batch
from executor.data_parallel import make_optimizer
from planner.cost import estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile, load_profile
from planner.plan import Plan
from planner.scenario import Precision, Scenario, load_scenario
from planner.graph import Transformer, loss_fn

REPO = Path(__file__).resolve().parents[1]
DP_RANKS = 2
MEASURED_CPU = REPO / "profiles" / "cpu-2core.json"
PLANS = {  # four layouts of the tiny model on 4 ranks (tiny-dense has 2 KV heads: tp <= 2)
    "dp4": {"dims": {"dp": 4}, "micro_batch_size": 2},
    "dp2 x tp2": {"dims": {"dp": 2, "tp": 2}, "micro_batch_size": 4},
    "dp2 x pp2 1f1b": {"dims": {"dp": 2, "pp": 2}, "micro_batch_size": 1},
    "tp2 x pp2 1f1b": {"dims": {"tp": 2, "pp": 2}, "micro_batch_size": 2},
}
DTYPE = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}


def ddp_worker(scenario_json: Path, *, steps: int, micro_batch_size: int, out: Path) -> None:
    """The baseline: torch DDP, no_sync during accumulation, same init, data and AdamW."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    scenario = Scenario.model_validate_json(scenario_json.read_text())
    job, rank, world = scenario.job, dist.get_rank(), dist.get_world_size()
    with torch.device("meta"):
        model = Transformer(scenario.model)
    model.to_empty(device="cpu")
    model.init_weights(0)
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(list(model.parameters()), job=job)
    rows = job.global_batch // world
    micro = rows // micro_batch_size
    times = []
    for step in range(steps):
        inputs, labels = (t[rank * rows:(rank + 1) * rows] for t in global_batch(
            step, job=job, vocab=scenario.model.vocab_size, seed=0))
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(zip(inputs.chunk(micro), labels.chunk(micro))):
            if i < micro - 1:
                with ddp.no_sync():
                    (loss_fn(ddp(x), y) / micro).backward()
            else:
                (loss_fn(ddp(x), y) / micro).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    slowest = torch.tensor(times)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        out.write_text(json.dumps(slowest.tolist()))
    dist.barrier()
    dist.destroy_process_group()


def ddp_step_s(scenario: Scenario, *, steps: int, micro_batch_size: int, work: Path) -> float:
    (work / "scenario.json").write_text(scenario.model_dump_json())
    out = work / "ddp_times.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={DP_RANKS}",
           __file__, "--ddp-worker", str(work / "scenario.json"), "--steps", str(steps),
           "--micro-batch-size", str(micro_batch_size), "--out", str(out)]
    out.unlink(missing_ok=True)
    # rank 0 writes the times before teardown; a rare gloo teardown hang ends in the timeout above
    subprocess.run(cmd, check=False, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return statistics.median(json.loads(out.read_text())[1:])


def overhead(scenario: Scenario, *, steps: int, repeats: int, work: Path) -> dict[str, float]:
    """Alternate the two launches `repeats` times; compare medians of the per-run medians."""
    plan = Plan.model_validate({"dims": {"dp": DP_RANKS}, "micro_batch_size": 2})
    ours, base = [], []
    for i in range(repeats):
        base.append(ddp_step_s(scenario, steps=steps, micro_batch_size=2, work=work))
        measured = run_plan(plan, scenario, out_dir=work / f"dp{i}", options=RunOptions(steps=steps),
                            launch=Launch(nproc=DP_RANKS))
        ours.append(measured.step_time_s)
        print(f"repeat {i}: executor {ours[-1] * 1e3:.1f} ms  ddp {base[-1] * 1e3:.1f} ms", flush=True)
    executor_s, ddp_s = statistics.median(ours), statistics.median(base)
    return {"executor_step_s": executor_s, "ddp_step_s": ddp_s, "overhead_pct": 100 * (executor_s / ddp_s - 1)}


def predicted_vs_measured(scenario: Scenario, *, profile: Path | None, steps: int, work: Path) -> pd.DataFrame:
    hw = load_profile(profile) if profile else datasheet_profile(scenario.cluster)
    graph = extract_graph(scenario.model, seq_len=scenario.job.seq_len, batch=1, dtype=DTYPE[scenario.job.precision])
    rows = []
    for name, fields in PLANS.items():
        plan = Plan.model_validate(fields)
        predicted = estimate(graph, plan, hw=hw, cluster=scenario.cluster, job=scenario.job)
        measured = run_plan(plan, scenario, out_dir=work / name.replace(" ", "_"), options=RunOptions(steps=steps))
        rows.append({"plan": name, "predicted_step_s": predicted.step_time_s, "measured_step_s": measured.step_time_s,
                     "error_pct": 100 * (predicted.step_time_s / measured.step_time_s - 1),
                     "measured_peak_memory_gib": measured.peak_memory_gib, "final_loss": measured.losses[-1]})
        print(f"{name:16s} predicted {predicted.step_time_s * 1e3:8.1f} ms  measured "
              f"{measured.step_time_s * 1e3:8.1f} ms", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "tiny-dense_cpu4.toml")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", type=Path, default=MEASURED_CPU if MEASURED_CPU.is_file() else None,
                   help="hardware profile (default: profiles/cpu-2core.json when present, else datasheet)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "bench_executor")
    p.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--micro-batch-size", type=int, default=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ddp_worker is not None:
        ddp_worker(a.ddp_worker, steps=a.steps, micro_batch_size=a.micro_batch_size, out=a.out)
        return
    scenario = load_scenario(a.scenario)
    work = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    summary = overhead(scenario, steps=a.steps, repeats=a.repeats, work=work)
    print(" ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    frame = predicted_vs_measured(scenario, profile=a.profile, steps=a.steps, work=work)
    print(frame.to_string(index=False, float_format="%.4f"))
    a.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(a.out / "predicted_vs_measured.csv", index=False)
    (a.out / "predicted_vs_measured.json").write_text(json.dumps({"overhead": summary, "scenario": scenario.name,
                                                                  "plans": frame.to_dict(orient="records")}, indent=1))
    print(f"wrote {a.out}/predicted_vs_measured.json")


if __name__ == "__main__":
    main()
