"""Names of the terms an Estimate breaks into: where a step's time goes and what a GPU's memory holds.

StrEnums: the report, CSV and JSON see their string values, so files keep their column names.
"""

from __future__ import annotations

from enum import StrEnum


class TimeTerm(StrEnum):
    """Estimate.time_breakdown_s keys (seconds on the critical pipeline stage, per step)."""

    COMPUTE = "compute"
    RECOMPUTE = "recompute"
    TP = "tp"
    CP = "cp"
    EP = "ep"
    DP = "dp"
    PP = "pp"
    PIPELINE_ACTIONS = "pipeline_actions"
    EXPOSED_COMM = "exposed_comm"
    BUBBLE = "bubble"
    OPTIMIZER = "optimizer"
    CORE_SHARING = "core_sharing"
    VOCAB = "vocab"  # vocabulary-parallel collectives (cost/vocab.py)
    OFFLOAD = "offload"  # host/NVMe transfers of offloaded parameters and activations (cost/offload.py)


class MemoryTerm(StrEnum):
    """Estimate.stage_memory keys (bytes on one GPU of a stage)."""

    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    OPTIMIZER = "optimizer"
    ACTIVATIONS = "activations"
    COMM_BUFFERS = "comm_buffers"
    ALLOCATOR_MARGIN = "allocator_margin"
    CP_BUFFERS = "cp_buffers"  # ring K,V blocks in flight / Ulysses gathered q,k,v (cost/context.py)
    FP8_WEIGHTS = "fp8_weights"  # FP8 weight copies + transposes (and MXFP8 scales) beside bf16 weights (cost/fp8.py)
    OFFLOAD_STAGING = "offload_staging"  # GPU buffers of states streamed to host/NVMe (cost/offload.py)
