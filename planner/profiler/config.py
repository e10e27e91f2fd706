"""What a profiler run is asked to do (ProfileConfig) and what rank 0 brings home (RankReport);
a leaf of the profiler package, read by run.py (measuring) and build.py (fitting)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from planner.hardware import DeviceKind
from planner.profiler import host as ph
from planner.profiler import kernels as pk
from planner.profiler import links as pl
from planner.scenario import LinkTable, Scenario


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileConfig:
    name: str
    device: DeviceKind
    nproc: int = 2
    quick: bool = False
    scenarios: tuple[Scenario, ...] = ()
    threads: int | None = None  # CPU threads per rank; None = cores // ranks
    pair_links: bool = False  # `--links`: also measure every node pair (profiler/pairs.py)

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"--nproc: must be >= 1, got {self.nproc}")
        if self.device == DeviceKind.CUDA and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu")
        if self.device == DeviceKind.CUDA and self.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {self.nproc}: only {torch.cuda.device_count()} CUDA devices; lower --nproc")

    @property
    def cuda(self) -> bool:
        return self.device != DeviceKind.CPU

    def threads_per_rank(self, world_size: int) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // world_size)


@dataclass(slots=True, kw_only=True)
class RankReport:
    """What rank 0 sends home: medians across ranks and its own link timings."""

    kernels: list[pk.KernelResult]
    links: list[pl.LinkResult]
    world_size: int
    threads: int
    skipped_kernels: int
    host: list[ph.HostSamples] = field(default_factory=list)  # one per rank (CPU runs)
    notes: list[str] = field(default_factory=list)
    runtime_bytes: float = 0.0  # resident set after torch import + process-group init (CPU)
    pairs: LinkTable | None = None  # `--links`: the measured per-pair table
