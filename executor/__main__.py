"""torchrun entry point: `torchrun --nproc-per-node N -m executor --plan P.json --scenario-json S.json --out DIR`."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from executor.launch import MEASUREMENT
from executor.mesh import logical_rank
from executor.train import RunOptions, train
from planner.plan import Plan
from planner.scenario import Scenario


# a lost peer (or a stuck teardown) fails the run instead of hanging it; torchrun may then restart it
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m executor")
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--scenario-json", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--resume-from", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--kill-at-step", type=int, default=None, help="fault injection (restart tests)")
    return p.parse_args()


def _store() -> dist.Store:
    """torchrun's store under a per-attempt prefix: after a restart, sub-groups (DeviceMesh axes)
    would otherwise find the dead attempt's gloo addresses under the same keys."""
    env = os.environ
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False,
                          wait_for_workers=False)
    return dist.PrefixStore(f"executor/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _init(plan: Plan) -> None:
    """NCCL on CUDA, gloo on CPU; torchrun's environment gives the physical rank and world size,
    the plan's device mapping the logical rank this process plays (mesh.logical_rank)."""
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    dist.init_process_group(backend, store=_store(), rank=logical_rank(plan, int(os.environ["RANK"])),
                            world_size=int(os.environ["WORLD_SIZE"]), timeout=COLLECTIVE_TIMEOUT)


def _die_with_parent() -> None:
    """Linux: SIGKILL this rank when torchrun (its parent) dies, so no rank outlives a killed
    launch at 100% CPU (prctl(2) PR_SET_PDEATHSIG = 1)."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def main() -> None:
    _die_with_parent()
    a = _args()
    plan = Plan.load(a.plan)
    _init(plan)
    options = RunOptions(steps=a.steps, seed=a.seed, checkpoint_every=a.checkpoint_every,
                         checkpoint_dir=a.checkpoint_dir or (a.out / "checkpoints" if a.checkpoint_every else None),
                         resume_from=a.resume_from, data_path=a.data, kill_at_step=a.kill_at_step)
    measurement = train(plan, Scenario.model_validate_json(a.scenario_json.read_text()),
                        options=options)
    if dist.get_rank() == 0:
        tmp = a.out / (MEASUREMENT + ".tmp")
        tmp.write_text(measurement.model_dump_json(indent=2))
        tmp.replace(a.out / MEASUREMENT)
    dist.barrier()  # before teardown: FSDP2 on gloo can abort without it (PLATFORM.md)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
