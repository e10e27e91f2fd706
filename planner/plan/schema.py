"""The plan file: degrees, knobs and JSON round-trip (the contract between planner and executor)."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.errors import load_model
from planner.plan.dims import DEFAULT_EXPERT_RANK_ORDER, DEFAULT_RANK_ORDER, Axis, ParallelDims

PLAN_VERSION = 1


class Schedule(StrEnum):
    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED_1F1B = "interleaved-1f1b"
    ZERO_BUBBLE = "zero-bubble"


class Recompute(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class CpKind(StrEnum):
    """How context parallelism exchanges the sequence (cost/context.py prices each).

    RING: zigzag ring attention, KV blocks one way (Liu et al. 2023). RING_BIDIRECTIONAL: half of
    the KV each way, so every link is busy in both directions (the duplex links TokenRing
    exploits, Wang et al. 2024). ALL_TO_ALL: DeepSpeed-Ulysses head scatter / sequence gather
    (Jacobs et al. 2023); needs local heads divisible by cp. HYBRID: all-to-all over `cp_a2a`
    ranks inside the node, ring over the rest (USP, Fang & Zhao 2024, arXiv 2405.07719).
    """

    RING = "ring"
    RING_BIDIRECTIONAL = "ring-bidirectional"
    ALL_TO_ALL = "all-to-all"
    HYBRID = "hybrid"


class OffloadState(StrEnum):
    """Training state that can live off the GPU (ZeRO-Offload / ZeRO-Infinity)."""

    OPTIMIZER = "optimizer"
    GRADIENTS = "gradients"
    PARAMETERS = "parameters"
    ACTIVATIONS = "activations"


class OffloadTier(StrEnum):
    HOST = "host"  # CPU DRAM over PCIe or NVLink-C2C (Ren et al. 2021, ZeRO-Offload)
    NVME = "nvme"  # local NVMe (Rajbhandari et al. 2021, ZeRO-Infinity)


class Fp8Recipe(StrEnum):
    """FP8 scaling recipe for the linear layers (cost/fp8.py); None on a plan = the job's precision everywhere."""

    DELAYED = "delayed"
    CURRENT = "current"
    MXFP8 = "mxfp8"


class BalancePolicy(StrEnum):
    """How rows reach the data-parallel ranks.

    NONE: rows in sampling order, contiguous blocks per rank (Megatron's sampler).
    SORT_AND_PACK: rows sorted by attention work, dealt longest-first to the least-loaded rank
    with room left (LPT with equal row counts, the packing-balance idea of WLB-LLM, Wang et al. 2025).
    ZEPPELIN: as SORT_AND_PACK, and documents longer than half a row (the pieces that make a row
    heavy) have their attention split over every rank (hierarchical sequence partitioning of Zeppelin, "Balancing
    Variable-length Workloads in Data Parallel Large Model Training", 2025): near-even attention at the price of moving those documents' tokens.
    """

    NONE = "none"
    SORT_AND_PACK = "sort-and-pack"
    ZEPPELIN = "zeppelin"


class ZeroStage(IntEnum):
    """ZeRO stage; 3 is FSDP FULL_SHARD, 2 is SHARD_GRAD_OP-like."""

    NONE = 0
    OPTIMIZER = 1
    GRADIENTS = 2
    PARAMETERS = 3


class Plan(BaseModel):
    """Everything the executor needs to run one parallel layout, and the cost model to price it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = PLAN_VERSION
    dims: ParallelDims = ParallelDims()
    micro_batch_size: int = Field(1, ge=1)
    virtual_stages: int = Field(1, ge=1, description="interleaved chunks per pipeline rank")
    schedule: Schedule = Schedule.ONE_F_ONE_B
    zero_stage: ZeroStage = ZeroStage.NONE
    recompute: Recompute = Recompute.NONE
    sequence_parallel: bool = False
    cp_kind: CpKind = CpKind.RING
    cp_a2a: int = Field(1, ge=1, description="all-to-all ranks inside the CP group (hybrid only)")
    offload: dict[OffloadState, OffloadTier] = Field(default_factory=dict)
    fp8_recipe: Fp8Recipe | None = Field(None, description="with job precision fp8: linear GEMMs in FP8 by this "
                                         "recipe, attention/norms/optimizer in 16/32-bit")
    balance: BalancePolicy | None = Field(None, description="DP balance of packed documents; None = [job.sequences]")
    vocab_parallel: bool = Field(False, description="embedding and LM head split over all pipeline "
                                 "stages (Yeung et al. 2024, arXiv 2411.05288)")
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
    expert_load: list[list[float]] | None = Field(
        None,
        description="per MoE layer, tokens routed to each expert in the routing trace the plan is "
        "priced with (cost/experts.py); None means balanced routing. The executor ignores it",
    )
    rank_order: list[Axis] = Field(default_factory=lambda: list(DEFAULT_RANK_ORDER))
    expert_rank_order: list[Axis] = Field(
        default_factory=lambda: list(DEFAULT_EXPERT_RANK_ORDER)
    )
    device_mapping: list[tuple[int, int]] | None = Field(
        None,
        description="per logical rank (the rank grid's number), the (node, local GPU) it runs on; "
        "None means logical rank r on node r // gpus_per_node, GPU r % gpus_per_node (torchrun order)",
    )

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PLAN_VERSION:
            raise ValueError(f"plan version {v} is not supported; this planner writes {PLAN_VERSION}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if sorted(self.rank_order) != sorted(DEFAULT_RANK_ORDER):
            raise ValueError("rank_order must list each of pp, dp, cp, tp exactly once")
        if sorted(self.expert_rank_order) != sorted(DEFAULT_EXPERT_RANK_ORDER):
            raise ValueError("expert_rank_order must list each of pp, edp, ep, etp exactly once")
        if self.virtual_stages > 1 and self.schedule != Schedule.INTERLEAVED_1F1B:
            raise ValueError("virtual_stages > 1 needs schedule = 'interleaved-1f1b'")
        if self.schedule == Schedule.INTERLEAVED_1F1B and self.dims.pp == 1:
            raise ValueError("schedule 'interleaved-1f1b' needs pp > 1")
        if self.device_mapping is not None:
            _check_mapping(self.device_mapping, world=self.dims.world_size)
        self._check_knobs()
        if self.blocks_per_stage is not None:
            want = self.dims.pp * self.virtual_stages
            if len(self.blocks_per_stage) != want:
                raise ValueError(
                    f"blocks_per_stage: has {len(self.blocks_per_stage)} entries, "
                    f"needs pp*virtual_stages = {want}"
                )
        return self

    def _check_knobs(self) -> None:
        cp = self.dims.cp
        if self.cp_kind == CpKind.HYBRID and not (1 < self.cp_a2a < cp and cp % self.cp_a2a == 0):
            raise ValueError(f"cp_a2a: hybrid CP needs 1 < cp_a2a < cp={cp} dividing cp, got {self.cp_a2a}")
        if self.cp_kind != CpKind.HYBRID and self.cp_a2a != 1:
            raise ValueError("cp_a2a: only cp_kind = 'hybrid' takes an all-to-all degree; leave it 1")
        if self.vocab_parallel and self.dims.pp == 1:
            raise ValueError("vocab_parallel: needs pp > 1 (it spreads embedding and head over stages)")

    def ulysses_degree(self) -> int:
        """CP ranks that exchange heads by all-to-all (the rest form a ring)."""
        match self.cp_kind:
            case CpKind.ALL_TO_ALL:
                return self.dims.cp
            case CpKind.HYBRID:
                return self.cp_a2a
            case CpKind.RING | CpKind.RING_BIDIRECTIONAL:
                return 1

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

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: Path, *, flag: str | None = None) -> Plan:
        """Read a plan.json; UserError naming the file (and the field) on any problem."""
        return load_model(cls, path, what="plan", flag=flag)

    def describe(self) -> str:
        """The plan in words, for tables and reports."""
        d = self.dims
        words = d.describe()
        extras = [f"mbs{self.micro_batch_size}"]
        if d.pp > 1:
            extras.append(self.schedule.value + (f" vp{self.virtual_stages}" if self.virtual_stages > 1 else ""))
        if self.zero_stage:
            extras.append(f"zero{int(self.zero_stage)}")
        if self.recompute != Recompute.NONE:
            extras.append(f"recompute-{self.recompute.value}")
        if self.sequence_parallel:
            extras.append("sp")
        if tuple(self.rank_order) != DEFAULT_RANK_ORDER:  # the search varies it: twins must read apart
            extras.append("order " + "-".join(a.value for a in self.rank_order))
        if d.cp > 1 and self.cp_kind != CpKind.RING:
            extras.append(f"cp-{self.cp_kind.value}" + (f"{self.cp_a2a}" if self.cp_kind == CpKind.HYBRID else ""))
        extras += [f"offload-{state.value}-{tier.value}" for state, tier in self.offload.items()]
        if self.vocab_parallel:
            extras.append("vocab-parallel")
        if self.fp8_recipe is not None:
            extras.append(f"fp8-{self.fp8_recipe.value}")
        if self.balance is not None:
            extras.append(f"balance-{self.balance.value}")
        return f"{words} ({', '.join(extras)})"


def _check_mapping(mapping: list[tuple[int, int]], *, world: int) -> None:
    """A device mapping must place every logical rank on its own GPU of a full nodes x GPUs grid."""
    if len(mapping) != world:
        raise ValueError(f"device_mapping: has {len(mapping)} entries, needs one per rank ({world})")
    nodes = {node for node, _ in mapping}
    per_node = world // max(len(nodes), 1)
    if len(nodes) * per_node != world or set(mapping) != {(n, g) for n in range(len(nodes)) for g in range(per_node)}:
        raise ValueError(f"device_mapping: must use each (node, gpu) of nodes 0..{len(nodes) - 1} x gpus "
                         f"0..{per_node - 1} exactly once")


def even_split(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` near-equal integers, larger ones first."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]
