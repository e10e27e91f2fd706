"""Framework runtimes as data: one cited TOML file per framework version (scenario/frameworks/).

A runtime file states facts about how a training stack executes a step (attention kernel,
gradient-reduction dtype, what it overlaps, its ZeRO-3 runtime, its fusions, CUDA graphs, the
default MoE dispatcher, the recompute its recipes use), each with its citation. It never holds
an efficiency factor: efficiency lives in the kernel and link models of cost/, shared by every
framework. A scenario picks one with `[job] framework = "NAME"`; any [job] field given
explicitly overrides the single fact it names (runtime_job_fields).
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.plan import Recompute
from planner.scenario.kinds import (AttentionKernel, EpDispatcher, Fusion, OptimizerSharding, SelectiveRecompute,
                                    ShardingRuntime)

_FROZEN = ConfigDict(frozen=True, extra="forbid")
DEFAULT_FRAMEWORK = "generic"


class GradReduce(StrEnum):
    """Element type of the data-parallel gradient reduction."""

    FP32 = "fp32"  # fp32 main grads (Megatron under bf16, FSDP reduce_dtype=float32)
    MODEL = "model"  # the compute dtype (fp16 Megatron DDP, FSDP PURE bf16)


class FrameworkRuntime(BaseModel):
    """The facts one framework version's file states (scenario/frameworks/NAME.toml)."""

    model_config = _FROZEN
    name: str
    description: str
    matches: list[str] = Field(default_factory=list, description="lower-case substrings of a published "
                               "run's framework text that name this runtime")
    citations: list[str] = Field(min_length=1)
    attention: AttentionKernel
    grad_reduce: GradReduce
    zero3_runtime: ShardingRuntime
    zero1_runtime: OptimizerSharding = OptimizerSharding.DISTRIBUTED_OPTIMIZER
    tp_comm_overlap: bool
    dp_comm_overlap: bool
    param_gather_overlap: bool
    pp_comm_overlap: bool = Field(True, description="pipeline p2p overlapped with compute; False: every schedule "
                                  "step waits for its send/recv batch (the stage is busy for the transfer)")
    cuda_graphs: bool
    grouped_gemm: bool
    ep_dispatcher: EpDispatcher
    fusion: Fusion
    selective_recompute: SelectiveRecompute
    recompute: Recompute = Field(description="what the stack's published recipes use when a run does not say")
    sequence_parallel: bool = Field(description="its recipes shard norms/dropout over TP (Korthikanti et al. 2022)")
    zero_stage: int = Field(ge=0, le=3, description="ZeRO stage its recipes use when a run does not say "
                            "(1 = Megatron distributed optimizer)")
    gradient_accumulation: bool = Field(description="recipes split a rank's batch into micro-batches of 1 "
                                        "(Megatron); False: the local batch is one micro-batch (torchtitan "
                                        "training.local_batch_size, gradient_accumulation_steps = 1)")
    dropout: float = Field(ge=0, lt=1, description="dropout its recipes give GPT-style (non-gated) models that "
                           "do not state one (Megatron-LM arguments.py: hidden/attention dropout 0.1)")
    # Measured host (CPU) time of the stack's modules per traced forward operator, where the
    # stack's Python costs far more than a kernel launch (cost/compute.host_times); None: the
    # hardware profile's launch-cost model. The backward pays the same per op.
    host_us_per_op: float | None = Field(None, gt=0, description="outside the routed experts")
    host_us_per_expert_op: float | None = Field(None, gt=0, description="inside the routed experts, per local expert")
    grouped_gemm_streams: int = Field(0, ge=0, description="0: a rank's experts run as one grouped kernel; "
                                      "n: one GEMM launch per local expert, n streams at a time (TE GroupedLinear)")
    fp8_saved_inputs: bool = Field(False, description="FP8 linear layers keep their FP8-cast input (1 byte) for "
                                   "the weight gradient instead of the 16-bit one (Transformer Engine); False: "
                                   "the 16-bit input is saved and re-cast in the backward (torchao Float8Linear)")
    ring_merge_fp32: bool = Field(False, description="ring CP merges each step's partial attention output and "
                                  "accumulates dQ, dK, dV in float32 (torch context_parallel convert_to_f32); False: "
                                  "in the 16-bit dtype (TE AttnFuncWithCPAndKVP2P)")
    attention_unpads: bool = Field(False, description="the model packs q, k, v into unpadded rows around a "
                                   "variable-length attention call and re-pads its output (flash_attn.bert_padding)")
    attention_repeats_kv: bool = Field(False, description="the model repeats GQA K,V heads up to the Q heads "
                                       "before its attention call, so the kernel (and ring CP) sees as many K,V heads as Q")


@cache
def frameworks() -> dict[str, FrameworkRuntime]:
    """Every runtime file shipped in planner/scenario/frameworks, by name."""
    out = {}
    for entry in sorted(resources.files("planner.scenario").joinpath("frameworks").iterdir(),
                        key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        try:
            runtime = FrameworkRuntime.model_validate(tomllib.loads(entry.read_text()))
        except (ValidationError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"framework file {entry.name}: {err}") from None
        assert runtime.name == entry.name.removesuffix(".toml"), f"{entry.name}: name must match the file"
        out[runtime.name] = runtime
    return out


def framework(name: str) -> FrameworkRuntime:
    table = frameworks()
    if name not in table:
        raise ValueError(f"job.framework: unknown framework '{name}'; run `planner frameworks` for the list")
    return table[name]


def match_framework(text: str) -> FrameworkRuntime:
    """The runtime a free-text framework description names (published runs), else the generic one.

    The longest matching phrase wins, so 'megatron-lm 285068c8 (baseline' beats a shorter one.
    """
    text = re.sub(r"\s+", " ", text.lower())
    best, best_len = frameworks()[DEFAULT_FRAMEWORK], 0
    for runtime in frameworks().values():
        for phrase in runtime.matches:
            if phrase in text and len(phrase) > best_len:
                best, best_len = runtime, len(phrase)
    return best


# [job] fields a runtime fills when the scenario leaves them out (JobSpec names).
RUNTIME_JOB_FIELDS = ("attention", "zero3_runtime", "zero1_runtime", "tp_comm_overlap", "dp_comm_overlap",
                      "param_gather_overlap", "pp_comm_overlap", "cuda_graphs", "grouped_gemm", "ep_dispatcher", "fusion", "selective_recompute")


def runtime_job_fields(job: dict[str, Any]) -> dict[str, Any]:
    """The [job] table with the named framework's facts filled in where the table is silent.

    Explicit fields win (`attention = "eager"` overrides the runtime's kernel); the gradient
    reduction dtype maps to optimizer.grad_reduce_bytes only when the optimizer leaves it unset.
    """
    job = dict(job)
    runtime = framework(str(job.get("framework", DEFAULT_FRAMEWORK)))
    job["framework"] = runtime.name
    for name in RUNTIME_JOB_FIELDS:
        job.setdefault(name, getattr(runtime, name))
    if runtime.grad_reduce == GradReduce.MODEL:
        # gradients are accumulated, kept and reduced in the 16-bit dtype (Megatron-Core main_grad
        # buffer dtype follows grad_reduce_in_fp32; DeepSpeed/Megatron fp16 grads)
        optimizer = dict(job.get("optimizer", {}))
        element = 4 if str(job.get("precision", "bf16")) == "fp32" else 2
        optimizer.setdefault("grad_reduce_bytes", element)
        optimizer.setdefault("grad_bytes_per_param", element)
        job["optimizer"] = optimizer
    return job
