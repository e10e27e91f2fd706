"""The kinds of runtime fact a [job] (or a framework file) states: a leaf, like spec.py, so the
schema, the runtime registry and the cost model share one definition of each."""

from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    """Training precision of a job: its bytes per element and the peak it runs at."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP32 = "fp32"

    @property
    def bytes(self) -> int:
        match self:
            case Precision.FP8:
                return 1
            case Precision.FP32:
                return 4
            case _:
                return 2


class AttentionKernel(StrEnum):
    """The attention implementation a stack runs (the hardware profile holds each one's rates)."""

    FLASH = "flash"  # FlashAttention-2 (Dao 2023; torch SDPA's flash backend, flash-attn 2.x)
    CUDNN = "cudnn"  # cuDNN / Transformer Engine fused attention: FlashAttention-3-class on Hopper+
    EAGER = "eager"  # QK^T, materialised softmax over s^2 scores, AV (pre-2023 stacks)

    @property
    def fused(self) -> bool:
        return self != AttentionKernel.EAGER


class EpDispatcher(StrEnum):
    """How MoE tokens reach their experts' ranks (Megatron-Core moe README, DeepEP)."""

    ALL_TO_ALL = "all_to_all"  # NCCL all-to-all of the routed tokens (Megatron alltoall)
    ALL_GATHER = "all_gather"  # gather every token of the EP group, then reduce-scatter
    DEEPEP = "deepep"  # DeepEP kernels: NVLink+RDMA fused, SM-lean, overlapped with compute


class Fusion(StrEnum):
    """What the stack fuses among memory-bound operators."""

    EAGER = "eager"  # one kernel per traced PyTorch op
    FUSED_KERNELS = "fused_kernels"  # hand-written fused kernels (Megatron/TE/Apex)
    COMPILED = "compiled"  # torch.compile (Inductor) fuses pointwise chains


class SelectiveRecompute(StrEnum):
    """What `recompute = "selective"` replays in the backward."""

    ATTENTION_CORE = "attention_core"  # Korthikanti et al. 2022: softmax/dropout/AV of the attention core
    OP_SAC = "op_sac"  # torchtitan per-op SAC: keeps SDPA and every other matmul output, replays the rest


class ShardingRuntime(StrEnum):
    """How a ZeRO-3 runtime gathers parameters and reduces gradients (the cost model prices both).

    FSDP: PyTorch FSDP / Megatron-FSDP, one unit per transformer block: gathered for the forward,
    once more for recompute + backward, reduce-scatter overlapped with the backward.
    DEEPSPEED_2021: DeepSpeed stage 3 with its 2021 (v0.3-0.4) defaults: parameters gathered and
    released per sub-module (re-gathered for a recomputed forward unless reused within
    stage3_max_reuse_distance), gradient reduce-scatter on the compute stream (overlap_comm false).
    FSDP1: PyTorch FSDP1 (FlatParameter, torch 1.13-2.x), gathers and reduce-scatters priced as
    FSDP's. Composer's BACKWARD_POST prefetch issues a unit's backward gather from the post-backward
    hook of the unit after it, right before that unit's reduce-scatter; all collectives of the
    process group run in issue order on one NCCL stream and the autograd engine runs a unit's
    AccumulateGrad (the post hook) before the next unit's pre-backward hook, so BACKWARD_PRE reaches
    the same order (gather(i), scatter(i+1), gather(i-1), ...): either way a unit's gather and the
    previous unit's reduce-scatter share the unit's backward (Zhao et al. 2023, PyTorch FSDP, VLDB,
    Sec. 3.3, backward prefetching on one NCCL stream). Its sharded stages (FULL_SHARD,
    SHARD_GRAD_OP) also pay FSDP1's
    passes over each unit's unsharded flat gradient (cost/layers.fsdp1_grad_bytes).
    """

    FSDP = "fsdp"
    DEEPSPEED_2021 = "deepspeed-2021"
    FSDP1 = "fsdp1"

    @property
    def fsdp(self) -> bool:
        """A PyTorch FSDP runtime (one sharded fp32 copy, one gather per unit per pass)."""
        return self in (ShardingRuntime.FSDP, ShardingRuntime.FSDP1)


class OptimizerSharding(StrEnum):
    """How a ZeRO-1 runtime keeps the data-parallel replicas in step (the cost model prices both).

    DISTRIBUTED_OPTIMIZER: Megatron's distributed optimizer: gradients reduce-scattered, the updated
    shards all-gathered (overlapped as dp_comm_overlap / param_gather_overlap say).
    ZERO_REDUNDANCY: torch.distributed.optim.ZeroRedundancyOptimizer beside DDP: DDP all-reduces the
    whole gradients (buckets overlapped with the backward); after its local update each rank
    broadcasts its parameters to the others, inside step() (torch docs, Distributed Optimizers;
    overlap_with_ddp is experimental and off by default).
    """

    DISTRIBUTED_OPTIMIZER = "distributed_optimizer"
    ZERO_REDUNDANCY = "zero_redundancy"


class GpuFamily(StrEnum):
    """The silicon a GPU preset or inline GPU is (its die decides GEMM, flash and launch behaviour).

    A field of GpuSpec (and of a profile's DeviceInfo); an inline GPU names it (`family = "h100"`) or it is
    read once from the name's first dash-separated word, else GENERIC."""

    A100 = "a100"
    H100 = "h100"
    H800 = "h800"
    H200 = "h200"
    B200 = "b200"
    GB200 = "gb200"
    MI250X = "mi250x"
    MI300X = "mi300x"
    CPU = "cpu"
    GENERIC = "generic"

    @classmethod
    def from_name(cls, name: str) -> GpuFamily:
        word = name.split("-")[0].lower()
        return cls(word) if word in cls._value2member_map_ else cls.GENERIC

    @classmethod
    def fill(cls, data: object) -> object:
        """A raw GPU (or device) table with its family read from its name when it names none."""
        if isinstance(data, dict) and "family" not in data and isinstance(data.get("name"), str):
            return {**data, "family": cls.from_name(data["name"])}
        return data

    @property
    def die(self) -> GpuFamily:
        """H800/H200 share the H100 die and its tensor-core peak; GB200 the B200's."""
        return {GpuFamily.H800: GpuFamily.H100, GpuFamily.H200: GpuFamily.H100, GpuFamily.GB200: GpuFamily.B200}.get(self, self)

    @property
    def rocm(self) -> bool:
        return self in (GpuFamily.MI250X, GpuFamily.MI300X)
