"""Token batches: synthetic (seeded, identical on every rank) or windows of a plain text file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from executor.mesh import Meshes
from executor.ulysses import cp_positions
from planner.plan import Axis, Plan
from planner.scenario import JobSpec

STEP_SEED_STRIDE = 7919  # any odd constant: keeps per-step generators apart
MAX_STRIDE = 3  # few strides: a bigram model already learns most of it


def global_batch(step: int, *, job: JobSpec, vocab: int, seed: int,
                 data_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) [global_batch, seq_len] for `step`, the same on every rank and every plan."""
    gen = torch.Generator().manual_seed(seed * STEP_SEED_STRIDE + step)
    shape = (job.global_batch, job.seq_len + 1)
    if data_path is None:
        tokens = _progressions(shape, vocab=vocab, gen=gen)
    else:
        tokens = _text_windows(data_path, shape=shape, vocab=vocab, gen=gen)
    return tokens[:, :-1], tokens[:, 1:]


def _progressions(shape: tuple[int, int], *, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Rows (start + stride * i) mod vocab with random start and stride: learnable in a few steps,
    so a wrong gradient shows up in the loss curve (uniform random tokens stay at ln(vocab))."""
    start = torch.randint(vocab, (shape[0], 1), generator=gen)
    stride = torch.randint(1, MAX_STRIDE + 1, (shape[0], 1), generator=gen)
    return (start + stride * torch.arange(shape[1])) % vocab


def _text_windows(path: Path, *, shape: tuple[int, int], vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Byte-level tokens (byte mod vocab) from random windows of the file."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if len(data) <= shape[1]:
        raise ValueError(f"data: {path} has {len(data)} bytes; needs more than seq_len+1 = {shape[1]}")
    starts = torch.randint(len(data) - shape[1], (shape[0],), generator=gen).tolist()
    rows = [torch.from_numpy(np.array(data[s:s + shape[1]], dtype=np.int64)) for s in starts]
    return torch.stack(rows) % vocab


def local_batch(batch: tuple[torch.Tensor, torch.Tensor], *, plan: Plan,
                meshes: Meshes) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows (its dp shard) and positions (its CP kind's layout under cp)."""
    dp, cp = plan.dims.dp, plan.dims.cp
    rows = batch[0].shape[0] // dp
    start = meshes.local_rank(Axis.DP) * rows
    positions = cp_positions(plan.cp_kind, batch[0].shape[1], rank=meshes.local_rank(Axis.CP), cp=cp,
                             a2a=plan.cp_a2a)
    return tuple(t[start:start + rows][:, positions] for t in batch)
