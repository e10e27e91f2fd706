"""The kinds of runtime fact a [job] (or a framework file) states: a leaf, like spec.py, so the
schema, the runtime registry and the cost model share one definition of each."""

from __future__ import annotations

from enum import StrEnum


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
    """

    FSDP = "fsdp"
    DEEPSPEED_2021 = "deepspeed-2021"
