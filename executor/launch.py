"""`planner run`: check a plan against the launch, then start `torchrun -m executor` and read its Measurement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from executor import checkpoint
from executor.parallelize import check_supported
from executor.train import Measurement, RunOptions
from planner.plan import Plan, check
from planner.scenario import GIB, Scenario
from planner.scenario.models import count_params

MEASUREMENT = "measurement.json"
STOP_GRACE_S = 10.0  # torchrun gets this long to stop its ranks after SIGTERM, then SIGKILL
# fp32 weights + fp32 gradients + the optimizer's moments (AdamW: m and v, 8 B; SGD: momentum,
# 4 B): what a CPU rank holds per parameter (Rajbhandari et al. 2020, Sec. 3.1, in fp32).
_STATE_BYTES = {"adamw": 16, "sgd": 12}
RUN_INPUTS = "run"  # out_dir/run/{plan,scenario}.json: what torchrun's ranks read


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
    if launch.nproc is not None and launch.nproc < 1:
        raise ValueError(f"--nproc: must be >= 1, got {launch.nproc}")
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
    if not torch.cuda.is_available():
        check_host_memory(scenario, nproc=nproc, world=world)
    return nproc


def check_host_memory(scenario: Scenario, *, nproc: int, world: int) -> None:
    """CPU ranks share this host's memory: refuse a launch whose model states alone cannot fit.

    A lower bound for any plan: every parameter lives at least once across the world (ZeRO-3
    stores exactly one copy), so this node's nproc of world ranks hold at least nproc/world of
    one copy of weights, gradients and optimizer state.
    """
    total, _ = count_params(scenario.model)
    per_param = _STATE_BYTES.get(scenario.job.optimizer.kind.value, 16)
    need = total * per_param * nproc / world
    available = available_memory_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"memory: model {scenario.model.name} needs at least {need / GIB:,.1f} GiB of model states on this "
            f"node ({total / 1e9:,.2f}B params x {per_param} B x {nproc}/{world} ranks) but {available / GIB:,.1f} "
            "GiB is available; pass --scenario with the scenario this plan was searched for, or a smaller model")


def available_memory_bytes() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_options(options: RunOptions) -> None:
    """Files the run reads must exist before any rank starts (a silent fresh start hides a typo)."""
    if options.data_path is not None and not options.data_path.is_file():
        what = "is not a file" if options.data_path.exists() else "does not exist"
        raise ValueError(f"--data: {options.data_path} {what}; pass a plain text file")
    if options.resume_from is not None:
        if not options.resume_from.is_dir():
            raise ValueError(f"--resume-from: {options.resume_from} does not exist; pass the checkpoint directory "
                             "of an earlier run (its checkpoints/ or one step_* inside it)")
        if checkpoint.latest(options.resume_from) is None:
            raise ValueError(f"--resume-from: {options.resume_from} holds no complete checkpoint; pass a run's "
                             "checkpoints/ directory (written with --checkpoint-every)")


def torchrun_command(*, nproc: int, launch: Launch, run_dir: Path, options: RunOptions) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--max-restarts={launch.max_restarts}"]
    if launch.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={launch.rdzv_endpoint}"]
    cmd += ["-m", "executor", "--plan", str(run_dir / RUN_INPUTS / "plan.json"), "--scenario-json",
            str(run_dir / RUN_INPUTS / "scenario.json"), "--out", str(run_dir), "--steps", str(options.steps),
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
    check_options(options)
    inputs = out_dir / RUN_INPUTS  # never out_dir/plan.json: that is the search's answer (its report reads it)
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "plan.json").write_text(plan.to_json())
    (inputs / "scenario.json").write_text(scenario.model_dump_json())
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = torchrun_command(nproc=nproc, launch=launch, run_dir=out_dir, options=options)
    returncode = supervise(cmd, env=env)
    if returncode != 0:
        raise RuntimeError(f"executor: torchrun exited with code {returncode}")
    return Measurement.model_validate_json((out_dir / MEASUREMENT).read_text())


def supervise(cmd: list[str], *, env: dict[str, str]) -> int:
    """Run torchrun in its own session and return its exit code; on any exception (Ctrl-C's
    KeyboardInterrupt, SIGTERM's SystemExit from the CLI) stop it and every rank before re-raising.

    torchrun starts each rank in a session of its own, so killing torchrun's group does not
    reach them: the ranks are found as torchrun's descendants while it is alive, torchrun gets
    SIGTERM (it forwards it to its ranks), and whatever is left after STOP_GRACE_S gets SIGKILL.
    The ranks also die with torchrun (PR_SET_PDEATHSIG, executor/__main__.py).
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        stop_tree(proc)
        raise


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun's process group, wait, then SIGKILL it and every descendant still alive."""
    tree = descendants(proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone: it holds no CPU or memory)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc/*/stat parent links (Linux; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
