"""Plan-independent checkpoints with torch.distributed.checkpoint (DCP).

Keys are whole-model FQNs, and stacked expert weights are stored one expert per key, so a run
saved under one layout (TP/PP/DP/EP degrees, ZeRO stage, expert placement) loads under another:
DCP reshards DTensors, and each rank asks only for the keys it holds (universal checkpointing,
Lian et al. 2024).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from executor.expert_parallel import ETP_SHARD_DIM
from executor.tied import COPY_FQN, TIED_FQN

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


def _local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's rows of a stacked expert tensor and the index of the first (FSDP2 shards dim 0
    in torch.chunk blocks of ceil(E/n) rows over the expert-data-parallel mesh)."""
    if not isinstance(tensor, DTensor):
        return tensor, 0
    mesh = tensor.device_mesh
    block = math.ceil(tensor.shape[0] / mesh.size())
    return tensor.to_local(), min(mesh.get_local_rank() * block, tensor.shape[0])


def _split(module: nn.Module, fqn: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """One key per expert; an expert-TP shard (etp > 1) is saved as a DTensor over the etp mesh so
    DCP stitches the whole expert together and re-shards it for another etp degree."""
    ids = _expert_ids(module, fqn)
    if ids is None or tensor.ndim == 0:
        return {prefix + fqn: tensor}
    rows, first = _local_rows(tensor)
    etp_mesh = getattr(module.get_submodule(fqn.rpartition(".")[0]), "etp_mesh", None)
    out = {}
    for i, row in enumerate(rows):
        if etp_mesh is not None:
            row = DTensor.from_local(row, etp_mesh, [Shard(ETP_SHARD_DIM[fqn.rpartition(".")[2]] - 1)],
                                     run_check=False)
        out[f"{prefix}{fqn}.expert{ids[first + i]}"] = row
    return out


def _canonical(module: nn.Module, fqn: str) -> str:
    """A last pipeline stage's copy of a tied embedding is saved as the embedding (executor.tied)."""
    spec = getattr(module, "spec", None)
    tied = spec is not None and spec.tie_word_embeddings
    return TIED_FQN if tied and fqn == COPY_FQN else fqn


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
            fqn = _canonical(module, fqn)
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
