"""The parallel plan: degrees, knobs and JSON round-trip (the contract with the executor)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from planner.scenario import ModelSpec, Scenario

PLAN_VERSION = 1


class Axis(StrEnum):
    """A parallel axis. Attention layers use dp/cp/tp, expert layers use edp/ep/etp (folding)."""

    DP = "dp"
    TP = "tp"
    PP = "pp"
    CP = "cp"
    EP = "ep"
    ETP = "etp"
    EDP = "edp"


class Schedule(StrEnum):
    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED_1F1B = "interleaved-1f1b"
    ZERO_BUBBLE = "zero-bubble"


class Recompute(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class ZeroStage(IntEnum):
    """ZeRO stage; 3 is FSDP FULL_SHARD, 2 is SHARD_GRAD_OP-like."""

    NONE = 0
    OPTIMIZER = 1
    GRADIENTS = 2
    PARAMETERS = 3


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

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def cp_enabled(self) -> bool:
        return self.cp > 1

    @property
    def ep_enabled(self) -> bool:
        return self.ep > 1

    @property
    def etp_enabled(self) -> bool:
        return self.etp > 1

    def degree(self, axis: Axis) -> int:
        match axis:
            case Axis.EDP:
                return self.edp
            case _:
                return getattr(self, axis.value)

    def validate_for(self, *, world_size: int, model: ModelSpec) -> None:
        """Raise ValueError naming the axis when these degrees cannot run `model` on `world_size`."""
        if self.world_size != world_size:
            raise ValueError(
                f"dims: dp*tp*pp*cp = {self.dp}*{self.tp}*{self.pp}*{self.cp} = {self.world_size} "
                f"but the cluster has {world_size} GPUs; make the product equal the GPU count"
            )
        kv_heads = model.num_key_value_heads or model.num_attention_heads
        if model.num_attention_heads % self.tp:
            raise ValueError(
                f"tp: {self.tp} does not divide num_attention_heads={model.num_attention_heads}"
            )
        if kv_heads % self.tp and self.tp % kv_heads:
            raise ValueError(
                f"tp: {self.tp} and num_key_value_heads={kv_heads} must divide one another"
            )
        if self.pp > model.num_hidden_layers:
            raise ValueError(f"pp: {self.pp} exceeds num_hidden_layers={model.num_hidden_layers}")
        if model.is_moe and model.num_local_experts % self.ep:
            raise ValueError(
                f"ep: {self.ep} does not divide num_local_experts={model.num_local_experts}"
            )
        if not model.is_moe and (self.ep > 1 or self.etp > 1):
            raise ValueError("ep/etp: expert parallelism needs an MoE model; set ep=1 and etp=1")


class DimsModel(BaseModel):
    """JSON form of ParallelDims."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dp: int = Field(1, ge=1)
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    cp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    etp: int = Field(1, ge=1)

    def to_dims(self) -> ParallelDims:
        return ParallelDims(**self.model_dump())


class Plan(BaseModel):
    """Everything the executor needs to run one parallel layout, and the cost model to price it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = PLAN_VERSION
    dims: DimsModel = DimsModel()
    micro_batch_size: int = Field(1, ge=1)
    virtual_stages: int = Field(1, ge=1, description="interleaved chunks per pipeline rank")
    schedule: Schedule = Schedule.ONE_F_ONE_B
    zero_stage: ZeroStage = ZeroStage.NONE
    recompute: Recompute = Recompute.NONE
    sequence_parallel: bool = False
    blocks_per_stage: list[int] | None = Field(
        None,
        description="transformer blocks in each (virtual) stage, pp*virtual_stages entries in "
        "schedule order; the embedding sits on the first, the head and loss on the last; "
        "None means an even split",
    )
    expert_placement: list[list[int]] | None = Field(
        None,
        description="per MoE layer, the EP rank hosting each expert; None means contiguous "
        "blocks of num_experts/ep experts per rank",
    )
    rank_order: list[Axis] = Field(default_factory=lambda: list(DEFAULT_RANK_ORDER))
    expert_rank_order: list[Axis] = Field(
        default_factory=lambda: list(DEFAULT_EXPERT_RANK_ORDER)
    )

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PLAN_VERSION:
            raise ValueError(f"plan version {v} is not supported; this planner writes {PLAN_VERSION}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        ParallelDims(**self.dims.model_dump())  # raises on inconsistent folding
        if sorted(self.rank_order) != sorted(DEFAULT_RANK_ORDER):
            raise ValueError("rank_order must list each of pp, dp, cp, tp exactly once")
        if sorted(self.expert_rank_order) != sorted(DEFAULT_EXPERT_RANK_ORDER):
            raise ValueError("expert_rank_order must list each of pp, edp, ep, etp exactly once")
        if self.virtual_stages > 1 and self.schedule != Schedule.INTERLEAVED_1F1B:
            raise ValueError("virtual_stages > 1 needs schedule = 'interleaved-1f1b'")
        if self.schedule == Schedule.INTERLEAVED_1F1B and self.dims.pp == 1:
            raise ValueError("schedule 'interleaved-1f1b' needs pp > 1")
        if self.blocks_per_stage is not None:
            want = self.dims.pp * self.virtual_stages
            if len(self.blocks_per_stage) != want:
                raise ValueError(
                    f"blocks_per_stage: has {len(self.blocks_per_stage)} entries, "
                    f"needs pp*virtual_stages = {want}"
                )
        return self

    @property
    def parallel_dims(self) -> ParallelDims:
        return self.dims.to_dims()

    @property
    def num_chunks(self) -> int:
        return self.dims.pp * self.virtual_stages

    def stage_blocks(self, num_blocks: int) -> list[int]:
        """Blocks per chunk: the explicit partition, or an even split (remainder to the middle)."""
        if self.blocks_per_stage is not None:
            return list(self.blocks_per_stage)
        return even_split(num_blocks, self.num_chunks)

    def num_micro_batches(self, global_batch: int) -> int:
        per_replica = global_batch // self.dims.dp
        return max(1, per_replica // self.micro_batch_size)

    def validate_for(self, scenario: Scenario) -> None:
        """One-line ValueError when this plan cannot run the scenario's model on its cluster."""
        model, job = scenario.model, scenario.job
        self.parallel_dims.validate_for(world_size=scenario.cluster.world_size, model=model)
        blocks = self.stage_blocks(model.num_hidden_layers)
        if sum(blocks) != model.num_hidden_layers or min(blocks) < 0:
            raise ValueError(
                f"blocks_per_stage: sums to {sum(blocks)} but the model has "
                f"{model.num_hidden_layers} layers"
            )
        if self.num_chunks > model.num_hidden_layers:
            raise ValueError(
                f"pp*virtual_stages = {self.num_chunks} exceeds num_hidden_layers="
                f"{model.num_hidden_layers}; lower pp or virtual_stages"
            )
        if job.global_batch % (self.dims.dp * self.micro_batch_size):
            raise ValueError(
                f"micro_batch_size: global_batch={job.global_batch} is not divisible by "
                f"dp*micro_batch_size = {self.dims.dp}*{self.micro_batch_size}"
            )
        if job.seq_len % (2 * self.dims.cp) and self.dims.cp > 1:
            raise ValueError(
                f"cp: seq_len={job.seq_len} must be divisible by 2*cp = {2 * self.dims.cp} "
                "(load-balanced causal chunks)"
            )
        if self.sequence_parallel and self.dims.tp == 1:
            raise ValueError("sequence_parallel: needs tp > 1")
        if self.schedule == Schedule.INTERLEAVED_1F1B:
            m = self.num_micro_batches(job.global_batch)
            if m % self.dims.pp:
                raise ValueError(
                    f"schedule: interleaved 1F1B needs the micro-batch count ({m}) to be a "
                    f"multiple of pp={self.dims.pp}"
                )
        self._validate_placement(model)

    def _validate_placement(self, model: ModelSpec) -> None:
        if self.expert_placement is None:
            return
        ep, experts = self.dims.ep, model.num_local_experts
        for layer, placement in enumerate(self.expert_placement):
            counts = [placement.count(r) for r in range(ep)]
            if len(placement) != experts or counts != [experts // ep] * ep:
                raise ValueError(
                    f"expert_placement[{layer}]: must give each of {ep} EP ranks exactly "
                    f"{experts // ep} of the {experts} experts"
                )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> Plan:
        if not path.is_file():
            raise ValueError(f"plan: file {path} does not exist")
        return cls.model_validate_json(path.read_text())

    def describe(self) -> str:
        """The plan in words, for tables and reports."""
        d = self.dims
        parts = [f"{name}{getattr(d, name)}" for name in ("dp", "tp", "pp", "cp", "ep", "etp")
                 if getattr(d, name) > 1]
        words = "x".join(parts) or "single GPU"
        extras = [f"mbs{self.micro_batch_size}"]
        if d.pp > 1:
            extras.append(self.schedule.value + (f" vp{self.virtual_stages}" if self.virtual_stages > 1 else ""))
        if self.zero_stage:
            extras.append(f"zero{int(self.zero_stage)}")
        if self.recompute != Recompute.NONE:
            extras.append(f"recompute-{self.recompute.value}")
        if self.sequence_parallel:
            extras.append("sp")
        return f"{words} ({', '.join(extras)})"


def even_split(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` near-equal integers, larger ones first."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]
