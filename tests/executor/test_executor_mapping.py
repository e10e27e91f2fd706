"""The executor honours Plan.device_mapping: each process (one per GPU, numbered physically as
torchrun does) plays the logical rank the mapping gives it, so its groups are the mapped ones,
and the losses match one process."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.mesh import build_meshes, logical_rank
from executor.train import RunOptions, train
from planner.plan import Axis, Plan
from tests.executor.test_executor_parity import DENSE, SGD, STEPS, TOLERANCE, reference_losses, scenario_for

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# logical rank -> (node, local GPU): logical 0 runs on GPU 2, 1 on 0, 2 on 3, 3 on 1
MAPPING = [(0, 2), (0, 0), (0, 3), (0, 1)]
PLANS = {
    "dp2xtp2": {"dims": {"dp": 2, "tp": 2}, "micro_batch_size": 4, "device_mapping": MAPPING},
    "tp2xpp2": {"dims": {"tp": 2, "pp": 2}, "micro_batch_size": 2, "device_mapping": MAPPING},
}
# Worked by hand from the rank grid (pp, dp, cp, tp; last fastest) and MAPPING, per physical rank.
EXPECTED = {
    "dp2xtp2": {"tp": [[0, 2], [1, 3], [0, 2], [1, 3]], "dp": [[0, 1], [0, 1], [2, 3], [2, 3]]},
    "tp2xpp2": {"tp": [[0, 2], [1, 3], [0, 2], [1, 3]], "pp": [[0, 1], [0, 1], [2, 3], [2, 3]]},
}


def _worker(physical: int, world: int, port: int, out: str) -> None:
    """One process per (physical) GPU, as torchrun starts them; initialised as executor/__main__ does."""
    torch.set_num_threads(1)
    plan0 = Plan.model_validate(PLANS["dp2xtp2"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=logical_rank(plan0, physical),
                            world_size=world)
    to_physical = {logical: node * world + gpu for logical, (node, gpu) in enumerate(MAPPING)}
    results = {}
    for name, fields in PLANS.items():
        plan = Plan.model_validate(fields)
        meshes = build_meshes(plan, device_type="cpu", moe=False)
        mine = {axis.value: sorted(to_physical[r] for r in dist.get_process_group_ranks(meshes.group(axis)))
                for axis in (Axis.TP, Axis.DP, Axis.PP) if plan.dims.degree(axis) > 1}
        mine["physical"] = physical
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        losses = train(plan, scenario_for(DENSE, SGD), options=RunOptions(steps=STEPS)).losses
        results[name] = {"groups": everyone, "losses": losses}
    if physical == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as in test_executor_parity: skip gloo sub-group teardown


def test_mapped_plan_builds_mapped_groups_with_loss_parity(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "mapped.json"
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_worker, args=(4, port, str(out)), nprocs=4, join=True)
    results = json.loads(out.read_text())
    ref = reference_losses(DENSE, SGD)
    for name, expected in EXPECTED.items():
        groups = results[name]["groups"]
        by_physical = sorted(groups, key=lambda g: g["physical"])
        for axis, per_rank in expected.items():
            assert [g[axis] for g in by_physical] == per_rank, f"{name} {axis}"
        worst = max(abs(a - b) for a, b in zip(results[name]["losses"], ref))
        assert len(results[name]["losses"]) == STEPS and worst < TOLERANCE, f"{name}: {worst:.2e}"
