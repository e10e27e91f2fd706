"""Times compute kernels on the local device: GEMMs, causal attention and memory-bound ops.

Each kernel is warmed up, then timed `repeats` times; a timed sample runs the kernel enough
times back to back to last at least `min_sample_s` (so sub-millisecond CPU kernels are not
timer noise). CUDA kernels are timed with CUDA events, CPU kernels with perf_counter. We keep
the median and the 10th/90th percentiles of the per-call times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from planner.scenario import ModelSpec, Precision, Scenario

TORCH_DTYPES: dict[Precision, torch.dtype] = {
    Precision.FP32: torch.float32,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


class KernelOp(StrEnum):
    MATMUL = "matmul"  # shape [M, K, N]: [M, K] @ [K, N]
    ATTENTION = "attention"  # causal SDPA forward, shape [B, H, S, D]
    ATTENTION_BWD = "attention_bwd"  # its backward alone, shape [B, H, S, D]
    COPY = "copy"  # shape [numel]
    ADD = "add"
    SILU = "silu"
    GELU = "gelu"
    RMS_NORM = "rms_norm"  # shape [rows, hidden]
    LAYER_NORM = "layer_norm"

    @property
    def memory_bound(self) -> bool:
        return self not in (KernelOp.MATMUL, KernelOp.ATTENTION, KernelOp.ATTENTION_BWD)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    repeats: int


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelCase:
    """One kernel to time; `make` allocates its tensors and returns the zero-argument call."""

    op: KernelOp
    shape: tuple[int, ...]
    dtype: Precision
    flops: float
    bytes: float
    make: Callable[[torch.device], Callable[[], object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelResult:
    op: KernelOp
    shape: tuple[int, ...]
    dtype: Precision
    flops: float
    bytes: float
    timing: Timing


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelSweep:
    """Sizes of the sweep for one device kind; `quick` shrinks everything for tests."""

    dtypes: tuple[Precision, ...]
    mem_dtype: Precision
    squares: tuple[int, ...]
    tokens: tuple[int, ...]
    widths: tuple[tuple[int, int], ...]  # (K, N) pairs of transformer-like GEMMs
    seq_lens: tuple[int, ...]
    attn_heads: int
    attn_head_dim: int
    mem_numels: tuple[int, ...]
    max_flops: float  # skip kernels above this (with a count), so a CPU sweep stays short
    warmup: int
    repeats: int
    min_sample_s: float
    # Skip a kernel whose one call would take longer than this at the best rate measured so far
    # for its op and dtype (run._kernel_sweep): a CPU without native bf16 GEMM (no AVX512-BF16 or
    # AMX) runs bf16 matmuls ~70x slower than fp32 (1024^3: 4.1 s vs 0.056 s measured on an AMD
    # EPYC without AVX-512), which would stretch the sweep's largest bf16 cases to minutes each.
    max_call_s: float = 0.25


def default_sweep(*, cuda: bool, quick: bool) -> KernelSweep:
    """CPU: fp32 + bf16 only (fp16 GEMM has no fast CPU path); GPU: bf16, fp16, fp32 (TF32)."""
    if cuda:
        return KernelSweep(
            dtypes=(Precision.BF16, Precision.FP16, Precision.FP32), mem_dtype=Precision.BF16,
            squares=(256, 1024, 4096) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384),
            tokens=(2048,) if quick else (1024, 4096, 16384),
            widths=((4096, 4096),) if quick else ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)),
            seq_lens=(1024, 4096) if quick else (512, 1024, 2048, 4096, 8192, 16384, 32768),
            attn_heads=32, attn_head_dim=128,
            mem_numels=(1 << 24,) if quick else (1 << 24, 1 << 26, 1 << 28),
            max_flops=1e13 if quick else 5e14, warmup=3, repeats=5 if quick else 10, min_sample_s=1e-3,
        )
    return KernelSweep(
        dtypes=(Precision.FP32, Precision.BF16), mem_dtype=Precision.FP32,
        squares=(32, 256) if quick else (16, 32, 64, 128, 256, 512, 1024, 2048),
        tokens=(256,) if quick else (256, 1024, 4096),
        widths=((128, 352),) if quick else ((128, 352), (352, 128), (512, 1408), (1408, 512)),
        seq_lens=(128, 256) if quick else (128, 256, 512, 1024, 2048),
        attn_heads=4, attn_head_dim=32 if quick else 64,
        mem_numels=(1 << 16, 1 << 18) if quick else (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24),
        max_flops=2e8 if quick else 2e10, warmup=1, repeats=5 if quick else 9,
        min_sample_s=5e-4 if quick else 2e-3,
    )


# -- timing -----------------------------------------------------------------------------------


def _sample_s(fn: Callable[[], object], *, inner: int, device: torch.device) -> float:
    """Seconds per call over `inner` back-to-back calls (CUDA events on GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def time_call(fn: Callable[[], object], *, device: torch.device, warmup: int, repeats: int,
              min_sample_s: float) -> Timing:
    """Median and 10/90th percentiles of per-call time after warm-up."""
    for _ in range(warmup):
        fn()
    once_s = _sample_s(fn, inner=1, device=device)
    inner = max(1, min(10_000, math.ceil(min_sample_s / max(once_s, 1e-8))))
    samples_us = np.array([_sample_s(fn, inner=inner, device=device) * 1e6 for _ in range(repeats)])
    p10, median, p90 = np.percentile(samples_us, [10, 50, 90])
    return Timing(median_us=float(median), p10_us=float(p10), p90_us=float(p90), repeats=repeats)


# -- kernel cases -----------------------------------------------------------------------------


def matmul_case(m: int, k: int, n: int, dtype: Precision) -> KernelCase:
    """2MKN FLOPs; bytes = both operands read + the output written once."""
    tdt = TORCH_DTYPES[dtype]

    def make(device: torch.device) -> Callable[[], object]:
        a = torch.randn(m, k, device=device, dtype=tdt)
        b = torch.randn(k, n, device=device, dtype=tdt)
        out = torch.empty(m, n, device=device, dtype=tdt)
        return lambda: torch.mm(a, b, out=out)

    return KernelCase(op=KernelOp.MATMUL, shape=(m, k, n), dtype=dtype, flops=2.0 * m * k * n,
                      bytes=float((m * k + k * n + m * n) * dtype.bytes), make=make)


def attention_flops(b: int, h: int, s: int, d: int) -> float:
    """Forward FLOPs of QK^T and AV counted over the full s x s square (4bhs^2d), the count
    torch's FlopCounterMode and the meta tracer give; a causal kernel does about half of it."""
    return 4.0 * b * h * s * s * d


def attention_case(b: int, h: int, s: int, d: int, dtype: Precision, *, backward: bool) -> KernelCase:
    """Causal SDPA (flash/efficient kernels when the device has them); backward = 2x forward FLOPs."""
    tdt = TORCH_DTYPES[dtype]

    def make(device: torch.device) -> Callable[[], object]:
        q, k, v = (torch.randn(b, h, s, d, device=device, dtype=tdt, requires_grad=backward) for _ in range(3))
        if not backward:
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        grad = torch.randn_like(out)
        return lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    fwd = attention_flops(b, h, s, d)
    io_bytes = 4.0 * b * h * s * d * dtype.bytes * (2 if backward else 1)
    return KernelCase(op=KernelOp.ATTENTION_BWD if backward else KernelOp.ATTENTION, shape=(b, h, s, d),
                      dtype=dtype, flops=fwd * (2 if backward else 1), bytes=io_bytes, make=make)


def memory_case(op: KernelOp, numel: int, dtype: Precision, *, hidden: int = 1024) -> KernelCase:
    """Memory-bound op; bytes = tensors read + written (one pass each, weights ignored)."""
    tdt = TORCH_DTYPES[dtype]
    rows = max(1, numel // hidden)
    shape = (rows, hidden) if op in (KernelOp.RMS_NORM, KernelOp.LAYER_NORM) else (numel,)
    passes = 3 if op == KernelOp.ADD else 2

    def make(device: torch.device) -> Callable[[], object]:
        x = torch.randn(shape, device=device, dtype=tdt)
        y = torch.randn(shape, device=device, dtype=tdt)
        out = torch.empty_like(x)
        match op:
            case KernelOp.COPY:
                return lambda: out.copy_(x)
            case KernelOp.ADD:
                return lambda: torch.add(x, y, out=out)
            case KernelOp.SILU:
                return lambda: F.silu(x)
            case KernelOp.GELU:
                return lambda: F.gelu(x)
            case KernelOp.RMS_NORM:
                return lambda: F.rms_norm(x, (hidden,))
            case KernelOp.LAYER_NORM:
                return lambda: F.layer_norm(x, (hidden,))
        raise AssertionError(f"not a memory-bound op: {op}")

    return KernelCase(op=op, shape=shape, dtype=dtype, flops=0.0,
                      bytes=float(passes * math.prod(shape) * dtype.bytes), make=make)


def layer_gemm_shapes(model: ModelSpec, *, tokens: int, tp: int) -> list[tuple[int, int, int]]:
    """[M, K, N] of one block's linears (forward, input-grad and weight-grad GEMMs) and the
    LM head, with the TP-sharded dimension divided by tp (Megatron column/row split)."""
    h, hd = model.hidden_size, model.attn_head_dim
    q_out, kv_out = model.num_attention_heads * hd // tp, max(1, model.kv_heads // tp) * hd
    fwd = [(tokens, h, q_out), (tokens, h, kv_out), (tokens, q_out, h),
           (tokens, h, max(1, model.vocab_size // tp))]
    if model.is_moe:
        per_expert = max(1, tokens * model.num_experts_per_tok // model.num_local_experts)
        ffn = model.expert_intermediate_size
        fwd += [(per_expert, h, ffn), (per_expert, ffn, h), (tokens, h, model.num_local_experts)]
    else:
        ffn = model.intermediate_size // tp
        fwd += [(tokens, h, ffn), (tokens, ffn, h)]
    shapes = set()
    for m, k, n in fwd:
        shapes |= {(m, k, n), (m, n, k), (n, m, k)}  # Y = XW, dX = dY W^T, dW = X^T dY
    return sorted(shapes)


def scenario_shapes(scenario: Scenario) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int, int]]]:
    """GEMM [M,K,N] and attention [B,H,S,D] shapes of a scenario at micro-batch 1 and 2 and
    TP degrees 1, 2, 4, 8 up to the node size."""
    model, seq = scenario.model, scenario.job.seq_len
    tps = [tp for tp in (1, 2, 4, 8) if tp <= scenario.cluster.gpus_per_node]
    gemms: set[tuple[int, int, int]] = set()
    attn: set[tuple[int, int, int, int]] = set()
    for mb in (1, 2):
        for tp in tps:
            gemms |= set(layer_gemm_shapes(model, tokens=mb * seq, tp=tp))
            attn.add((mb, max(1, model.num_attention_heads // tp), seq, model.attn_head_dim))
    return sorted(gemms), sorted(attn)


def sweep_cases(sweep: KernelSweep, scenarios: list[Scenario]) -> Iterator[KernelCase]:
    """Every case of the sweep, scenario shapes included, cheapest op families first."""
    for numel in sweep.mem_numels:
        for op in KernelOp:
            if op.memory_bound:
                yield memory_case(op, numel, sweep.mem_dtype)
    gemms = {(s, s, s) for s in sweep.squares}
    gemms |= {(m, k, n) for m in sweep.tokens for k, n in sweep.widths}
    attn = {(1, sweep.attn_heads, s, sweep.attn_head_dim) for s in sweep.seq_lens}
    for scenario in scenarios:
        more_gemms, more_attn = scenario_shapes(scenario)
        gemms |= set(more_gemms)
        attn |= set(more_attn)
    for dtype in sweep.dtypes:
        yield from (matmul_case(*shape, dtype) for shape in sorted(gemms))
        for b, h, s, d in sorted(attn):
            yield attention_case(b, h, s, d, dtype, backward=False)
            yield attention_case(b, h, s, d, dtype, backward=True)


def run_case(case: KernelCase, *, sweep: KernelSweep, device: torch.device) -> KernelResult:
    fn = case.make(device)
    timing = time_call(fn, device=device, warmup=sweep.warmup, repeats=sweep.repeats,
                       min_sample_s=sweep.min_sample_s)
    return KernelResult(op=case.op, shape=case.shape, dtype=case.dtype, flops=case.flops,
                        bytes=case.bytes, timing=timing)
