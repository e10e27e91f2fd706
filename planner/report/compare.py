"""Predicted (cost model) vs measured (executor) numbers for one plan, side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.scenario import GIB



@dataclass(frozen=True, slots=True, kw_only=True)
class ComparisonRow:
    quantity: str
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """Signed relative error of the prediction (+ means predicted too high)."""
        return (self.predicted - self.measured) / self.measured if self.measured else float("nan")


def compare(estimate: Any, measurement: Any) -> list[ComparisonRow]:
    """Rows for the quantities both sides name the same (Measurement mirrors Estimate's names)."""
    return [
        ComparisonRow(quantity="step_time_s", predicted=estimate.step_time_s, measured=measurement.step_time_s),
        ComparisonRow(quantity="tokens_per_s_per_gpu", predicted=estimate.tokens_per_s_per_gpu,
                      measured=measurement.tokens_per_s_per_gpu),
        ComparisonRow(quantity="peak_memory_gib", predicted=estimate.peak_memory_bytes / GIB,
                      measured=measurement.peak_memory_gib),
    ]
