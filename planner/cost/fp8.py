"""FP8 training recipes: the scaling work each adds to the kernel model's FP8 GEMMs, the copies they keep.

Transformer Engine's recipes (NVIDIA Transformer Engine docs, "Using FP8 with Transformer
Engine"; Micikevicius et al. 2022, "FP8 Formats for Deep Learning", arXiv 2209.05433): only the
linear layers' GEMMs run in FP8; attention, norms, the loss and the optimizer stay in 16/32-bit;
model weights stay bf16 with fp32 master copies in the optimizer. Which ops run in FP8 and the
GEMM rates (FP8 peak, tiles, waves, the tensor-wise cast traffic of current scaling) belong to the
kernel model (cost/compute.py _gemm_precision, cost/kernels.py fp8_cast_bytes), once; a recipe
changes only the bytes per cast element:
- delayed: the scale comes from an amax history of earlier steps, the amax is taken inside the
  cast, so the cast costs the fused pass even in an eager stack;
- current: the scale comes from this tensor's amax, an extra read before the cast unless fused
  (kernels.py's own numbers);
- mxfp8: 32-element blocks with an E8M0 scale each (OCP Microscaling Formats spec v1.0), amax
  and cast fused per block, plus the scales (1 byte per 32 elements); Blackwell tensor cores.
The weights' FP8 copies and their transposes (for the backward GEMMs) are cached per step: 2 bytes
per parameter (+ block scales).
"""

from __future__ import annotations

from planner.cost.kernels import FP8_CAST_BYTES_EAGER, FP8_CAST_BYTES_FUSED
from planner.plan import Fp8Recipe, Plan
from planner.scenario import JobSpec, Precision

_MX_BLOCK = 32  # elements per MXFP8 scale
# Share of a GEMM's bf16 traffic (inputs + weight + output) that is input to be cast: ~2/3
# (the fallback without GEMM shapes, compute.op_times).
GEMM_INPUT_SHARE = 2.0 / 3.0
FP8_WEIGHT_COPY_BYTES = 2.0  # FP8 weight + its transpose per parameter
BF16_WEIGHT_BYTES = 2.0


def cast_bytes_per_element(recipe: Fp8Recipe | None, *, fused: bool) -> float:
    """Bytes the scaling and cast move per element of an FP8 GEMM input (kernels.fp8_cast_bytes
    multiplies it by the shapes). No recipe on the plan = kernels.py's tensor-wise current scaling."""
    match recipe:
        case Fp8Recipe.DELAYED:
            return FP8_CAST_BYTES_FUSED  # amax inside the cast: one pass
        case Fp8Recipe.MXFP8:
            return FP8_CAST_BYTES_FUSED + 1.0 / _MX_BLOCK  # per-block amax fused, one scale byte per block
        case _:
            return FP8_CAST_BYTES_FUSED if fused else FP8_CAST_BYTES_EAGER


def weight_cache_bytes_per_param(recipe: Fp8Recipe | None) -> float:
    """FP8 copies kept beside the bf16 weights (memory term fp8_weights)."""
    if recipe is None:
        return 0.0
    scales = FP8_WEIGHT_COPY_BYTES / _MX_BLOCK if recipe == Fp8Recipe.MXFP8 else 0.0
    return FP8_WEIGHT_COPY_BYTES + scales


def element_bytes(plan: Plan, *, job: JobSpec) -> float:
    """Bytes per element of the weights and activations that are stored and communicated: bf16 under
    an FP8 recipe (TE keeps weights, activations and their collectives in bf16), else the job precision."""
    return BF16_WEIGHT_BYTES if plan.fp8_recipe is not None and job.precision == Precision.FP8 else job.precision.bytes


def gemm_output_bytes(job: JobSpec) -> float:
    """Bytes per element of a GEMM's output: bf16 out of an FP8 GEMM (torch._scaled_mm and TE's
    cuBLASLt FP8 GEMMs write a 16-bit result), else the job precision. A row-parallel layer's TP
    reduction (all-reduce, or SP's reduce-scatter) moves this output, whatever its inputs were
    gathered in: torchao's Float8ColwiseParallel / PrepareFloat8ModuleInput all-gather FP8 inputs, its
    Float8RowwiseParallel reduce-scatters the bf16 output and casts only the backward's gradient to
    FP8 before that gradient's all-gather (pytorch/ao torchao/float8/float8_tensor_parallel.py)."""
    return BF16_WEIGHT_BYTES if job.precision == Precision.FP8 else job.precision.bytes
