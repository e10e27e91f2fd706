"""`planner run`: check a plan against the launch, then start `torchrun -m executor` and read its Measurement."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from executor.parallelize import check_supported
from executor.train import Measurement, RunOptions
from planner.plan import Plan, check
from planner.scenario import Scenario

MEASUREMENT = "measurement.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """torchrun's side: processes per node, nodes, and (multi-node) the rendezvous."""

    nproc: int | None = None  # None: the plan's world size / nnodes
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of node 0, needed when nnodes > 1
    max_restarts: int = 0


def check_launch(plan: Plan, scenario: Scenario, *, launch: Launch) -> int:
    """ValueError (one line) unless the plan fits this launch and model; returns nproc per node."""
    world = plan.dims.world_size
    if launch.nnodes < 1 or world % launch.nnodes:
        raise ValueError(f"nnodes: {launch.nnodes} must divide the plan's dp*tp*pp*cp = {world} ranks")
    nproc = launch.nproc or world // launch.nnodes
    if nproc * launch.nnodes != world:
        raise ValueError(f"nproc: the plan needs dp*tp*pp*cp = {world} ranks but nproc*nnodes = "
                         f"{nproc}*{launch.nnodes} = {nproc * launch.nnodes}; change --nproc or the plan")
    if launch.nnodes > 1 and not launch.rdzv_endpoint:
        raise ValueError("rdzv_endpoint: multi-node runs need --rdzv-endpoint HOST:PORT of node 0")
    cluster = scenario.cluster.model_copy(update={"num_nodes": launch.nnodes, "gpus_per_node": nproc})
    check(plan, scenario.model_copy(update={"cluster": cluster}))
    check_supported(plan, scenario.model)
    return nproc


def torchrun_command(*, nproc: int, launch: Launch, run_dir: Path, options: RunOptions) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--max-restarts={launch.max_restarts}"]
    if launch.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={launch.rdzv_endpoint}"]
    cmd += ["-m", "executor", "--plan", str(run_dir / "plan.json"), "--scenario-json",
            str(run_dir / "scenario.json"), "--out", str(run_dir), "--steps", str(options.steps),
            "--seed", str(options.seed), "--checkpoint-every", str(options.checkpoint_every)]
    for flag, value in (("--checkpoint-dir", options.checkpoint_dir), ("--resume-from", options.resume_from),
                        ("--data", options.data_path), ("--kill-at-step", options.kill_at_step)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_plan(plan: Plan, scenario: Scenario, *, out_dir: Path, options: RunOptions,
             launch: Launch = Launch()) -> Measurement:
    """Validate, launch torchrun, wait; the Measurement that rank 0 wrote to out_dir."""
    nproc = check_launch(plan, scenario, launch=launch)
    if options.data_path is not None and not options.data_path.is_file():
        raise ValueError(f"data: file {options.data_path} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(plan.to_json())
    (out_dir / "scenario.json").write_text(scenario.model_dump_json())
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = torchrun_command(nproc=nproc, launch=launch, run_dir=out_dir, options=options)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"executor: torchrun exited with code {result.returncode}")
    return Measurement.model_validate_json((out_dir / MEASUREMENT).read_text())
