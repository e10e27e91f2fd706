"""Plan-independent checkpoints with torch.distributed.checkpoint (DCP).

Keys are whole-model FQNs, and stacked expert weights are stored one expert per key, so a run
saved under one layout (TP/PP/DP/EP degrees, ZeRO stage, expert placement) loads under another:
DCP reshards DTensors, and each rank asks only for the keys it holds (universal checkpointing,
Lian et al. 2024).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

COMPLETE = "COMPLETE"
PROGRESS = "progress.json"
_STEP_DIR = re.compile(r"step_(\d+)$")


def _expert_ids(module: nn.Module, fqn: str) -> list[int] | None:
    """Global expert ids of a stacked expert parameter's rows (None for other parameters)."""
    owner_path, _, leaf = fqn.rpartition(".")
    if not owner_path.endswith("experts"):
        return None
    experts = module.get_submodule(owner_path)
    return list(getattr(experts, "global_ids", range(getattr(experts, leaf).shape[0])))


def _split(module: nn.Module, fqn: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    ids = _expert_ids(module, fqn)
    if ids is None or tensor.ndim == 0:
        return {prefix + fqn: tensor}
    return {f"{prefix}{fqn}.expert{e}": tensor[row] for row, e in enumerate(ids)}


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW state ahead of the first step so DCP has tensors to load into."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}


def state_dict(modules: list[nn.Module], optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """Flat {key: tensor} aliasing the live parameters and optimizer state (DCP loads in place)."""
    out: dict[str, torch.Tensor] = {}
    param_fqn: dict[int, tuple[nn.Module, str]] = {}
    for module in modules:
        for fqn, p in module.named_parameters():
            out |= _split(module, fqn, p.detach(), "model.")
            param_fqn[id(p)] = (module, fqn)
    if optimizer is not None:
        for p, state in optimizer.state.items():
            module, fqn = param_fqn[id(p)]
            for name, value in state.items():
                out |= _split(module, f"{fqn}.{name}" if value.ndim == 0 else fqn, value,
                              f"optim.{name}." if value.ndim else "optim.")
    return out


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def save(root: Path, *, step: int, state: dict[str, torch.Tensor], progress: dict) -> None:
    """DCP save, then rank 0 writes progress and the COMPLETE marker (a crash mid-save leaves no marker)."""
    path = step_dir(root, step)
    dcp.save(state, checkpoint_id=str(path))
    dist.barrier()
    if dist.get_rank() == 0:
        (path / PROGRESS).write_text(json.dumps(progress))
        (path / COMPLETE).write_text("")
    dist.barrier()


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under root (or root itself when it is one)."""
    if (root / COMPLETE).is_file():
        return root
    steps = [p for p in root.glob("step_*") if _STEP_DIR.search(p.name) and (p / COMPLETE).is_file()]
    return max(steps, key=lambda p: int(_STEP_DIR.search(p.name).group(1)), default=None)


def load(path: Path, *, state: dict[str, torch.Tensor]) -> dict:
    """Fill `state` in place from the checkpoint; returns its progress record."""
    dcp.load(state, checkpoint_id=str(path))
    return json.loads((path / PROGRESS).read_text())
