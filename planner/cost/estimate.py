"""Estimate: what cost.estimate returns for one plan (the report and search read it; Measurement mirrors its names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost.terms import MemoryTerm, TimeTerm
from planner.scenario import GIB


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    step_time_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    hfu: float
    peak_memory_bytes: float
    fits: bool
    memory_capacity_bytes: float
    stage_memory: list[dict[MemoryTerm, float]]
    time_breakdown_s: dict[TimeTerm, float]
    bubble_fraction: float
    num_micro_batches: int
    timeline: list[dict] | None = None
    implausible: str | None = None  # why the MFU exceeds the best published run of its class (plausibility.py)
    offloaded_bytes: dict[str, float] = field(default_factory=dict)  # per GPU, by tier (host, nvme)
    notes: dict[str, float] = field(default_factory=dict)  # document masking, DP imbalance, ...

    def to_dict(self) -> dict:
        return {
            "step_time_s": self.step_time_s, "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu, "hfu": self.hfu, "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_gib": self.peak_memory_bytes / GIB, "fits": self.fits,
            "memory_capacity_bytes": self.memory_capacity_bytes,
            "memory_capacity_gib": self.memory_capacity_bytes / GIB,
            "stage_memory": self.stage_memory,
            "memory_gib": [{k: v / GIB for k, v in terms.items()} | {"total": sum(terms.values()) / GIB}
                           for terms in self.stage_memory],
            "time_breakdown_s": self.time_breakdown_s, "bubble_fraction": self.bubble_fraction,
            "num_micro_batches": self.num_micro_batches, "timeline": self.timeline,
            "implausible": self.implausible, "offloaded_bytes": self.offloaded_bytes, "notes": self.notes,
        }
