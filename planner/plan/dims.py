"""Parallel axes and their degrees: `ParallelDims` is the one record of degrees in the project."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Axis(StrEnum):
    """A parallel axis. Attention layers use dp/cp/tp, expert layers use edp/ep/etp (folding)."""

    DP = "dp"
    TP = "tp"
    PP = "pp"
    CP = "cp"
    EP = "ep"
    ETP = "etp"
    EDP = "edp"


# Outermost to innermost: TP innermost so it lands inside the NVLink domain (Megatron's default
# order is tp-cp-ep-dp-pp from the inside out).
DEFAULT_RANK_ORDER: tuple[Axis, ...] = (Axis.PP, Axis.DP, Axis.CP, Axis.TP)
DEFAULT_EXPERT_RANK_ORDER: tuple[Axis, ...] = (Axis.PP, Axis.EDP, Axis.EP, Axis.ETP)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParallelDims:
    """Degrees of every axis; the only place degrees live.

    Attention/dense layers split the world as pp x dp x cp x tp. With MoE parallel folding
    (Liu et al. 2025) expert layers re-split the same pp-slice as edp x ep x etp, so
    ep * etp must divide dp * cp * tp and edp is the rest.
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int = 1

    def __post_init__(self) -> None:
        for axis in ("dp", "tp", "pp", "cp", "ep", "etp"):
            if getattr(self, axis) < 1:
                raise ValueError(f"{axis}: degree must be >= 1, got {getattr(self, axis)}")
        if self.attention_slice % (self.ep * self.etp):
            raise ValueError(
                f"ep*etp: {self.ep}*{self.etp} must divide dp*cp*tp = {self.attention_slice} "
                "(expert layers fold onto the attention GPUs of one pipeline stage)"
            )

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def attention_slice(self) -> int:
        """GPUs in one pipeline stage."""
        return self.dp * self.cp * self.tp

    @property
    def edp(self) -> int:
        return self.attention_slice // (self.ep * self.etp)

    def describe(self) -> str:
        """`dp2xtp8xpp4`: the degrees above 1, in a fixed order."""
        parts = [f"{a}{getattr(self, a)}" for a in ("dp", "tp", "pp", "cp", "ep", "etp") if getattr(self, a) > 1]
        return "x".join(parts) or "single GPU"

    def degree(self, axis: Axis) -> int:
        match axis:
            case Axis.EDP:
                return self.edp
            case _:
                return getattr(self, axis.value)
