"""Kernel-level times from first principles: GEMMs by shape, grouped expert GEMMs, flash attention.

GEMM: a library kernel cuts C = A(m x k) B(k x n) into CTA tiles; tiles run in waves of one
per SM, so a problem of T tiles on S SMs takes ceil(T / S) waves and the last wave idles the
rest (wave quantisation); tiles padded past m or n compute zeros (tile quantisation) (NVIDIA
Deep Learning Performance guide, "Matrix Multiplication Background", Sec. 5-6). Each tile pays
a pipeline fill and an epilogue worth about `k_fill` K elements (CUTLASS multistage mainloop),
and no GEMM beats the memory roofline of reading A and B and writing C. A grouped GEMM (one
kernel for a rank's experts: TE GroupedLinear, Megatron --moe-grouped-gemm, CUTLASS grouped
GEMM) schedules every expert's tiles in one grid, so they quantise together and pay one fixed
cost; without it each expert is its own kernel.

Flash attention: the rate of the kernel on the work it really does (a causal mask halves it),
ramping with the sequence as s / (s + seq_half) (Dao 2023, FlashAttention-2, Fig. 4-7; Shah et
al. 2024, FlashAttention-3, Fig. 5-6), lower at head_dim 64.
"""

from __future__ import annotations

import math

from planner.hardware import FlashRates, GemmRates

# Causal attention computes the lower triangle plus the diagonal blocks (128-wide tiles).
FLASH_BLOCK = 128


def gemm_s(m: float, n: float, k: float, *, rates: GemmRates, peak_flops: float, bandwidth_bps: float,
           elem_bytes: float, groups: float = 1.0, grouped: bool = True) -> float:
    """Seconds for `groups` GEMMs of m x n x k (the experts of one rank), one kernel if grouped."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    flops = 2.0 * m * n * k * groups
    kernels = 1.0 if grouped else groups
    tiles_in_grid = groups if grouped else 1.0
    eff = max(_tile_efficiency(m, n, tile.m, tile.n, rates.sm_count, tiles_in_grid) * tile.efficiency
              for tile in rates.tiles)
    k_eff = k / (k + rates.k_fill)
    compute_s = flops / (peak_flops * rates.ceiling * eff * k_eff)
    memory_s = groups * elem_bytes * (m * k + k * n + m * n) / bandwidth_bps
    return max(compute_s, memory_s) + kernels * rates.fixed_us * 1e-6


def _tile_efficiency(m: float, n: float, tm: int, tn: int, sms: int, groups: float) -> float:
    """Useful work / SM-time of a grid of `groups` equal problems cut into tm x tn tiles."""
    tiles_m, tiles_n = math.ceil(m / tm), math.ceil(n / tn)
    tiles = tiles_m * tiles_n * groups
    waves = math.ceil(tiles / sms)
    padding = (m * n) / (tiles_m * tm * tiles_n * tn)
    return padding * tiles / (waves * sms)


def causal_fraction(seq_q: float, seq_kv: float) -> float:
    """Share of the full s_q x s_kv score matrix a causal kernel computes (triangle + diagonal tiles)."""
    if seq_kv <= 0:
        return 1.0
    return min(1.0, 0.5 * seq_q / seq_kv + FLASH_BLOCK / (2.0 * seq_kv))


def flash_rate(rates: FlashRates, *, seq_len: float, head_dim: int, backward: bool) -> float:
    """Fraction of the 16-bit peak a flash call sustains on its real work."""
    base = rates.bwd if backward else rates.fwd
    ramp = seq_len / (seq_len + rates.seq_half)
    return base * ramp * (rates.small_head_ratio if head_dim <= 64 else 1.0)


# FP8 linear layers (Transformer Engine / torchao Float8Linear, tensor-wise current scaling):
# bytes of extra memory traffic per element of a GEMM operand. Forward input: amax read (2) +
# cast read (2) + fp8 write (1); backward output-gradient: the same 5; the wgrad needs both
# operands transposed in fp8 (Hopper FP8 MMA takes K-major operands only): read 1 + write 1
# each. A fused producer (TE LayerNormLinear, Inductor) folds the amax pass into its epilogue.
FP8_CAST_BYTES_EAGER = 5.0
FP8_CAST_BYTES_FUSED = 3.0
FP8_TRANSPOSE_BYTES = 2.0


def fp8_cast_bytes(m: float, n: float, k: float, *, per: float) -> tuple[float, float]:
    """(forward, backward) cast bytes for one FP8 GEMM of m x n x k (weights cast once per step);
    `per` bytes per cast element: FP8_CAST_BYTES_* or the plan's recipe (cost/fp8.py)."""
    return per * m * k, per * m * n + FP8_TRANSPOSE_BYTES * (m * k + m * n)


# flash-attn 2.x bert_padding around a variable-length call, as llm-foundry's flash_attn_fn runs it on
# every attention even when nothing is padded (llmfoundry/models/layers/attention.py, 2024-01): unpad_input
# gathers q, k and v into packed rows (IndexFirstAxis, torch.gather: read 2 + write 2 bytes per 16-bit
# element) and pad_input scatters the output into a zeroed padded tensor (IndexPutFirstAxis: zeros 2 +
# read 2 + write 2); the backward scatters dq, dk, dv into zeroed tensors (2 + 2 + 2 each) and gathers the
# output gradient (2 + 2).
UNPAD_BYTES_FWD = 4.0
REPAD_BYTES_FWD = 6.0
UNPAD_BYTES_BWD = 6.0
REPAD_BYTES_BWD = 4.0


def unpad_bytes(q_elements: float, *, kv_ratio: float = 1.0) -> tuple[float, float]:
    """(forward, backward) bytes of the unpad/re-pad copies around one attention call, from the
    elements of Q (and of the output, the same size); K and V each have kv_ratio of Q's (GQA)."""
    qkv = q_elements * (1.0 + 2.0 * kv_ratio)
    return (UNPAD_BYTES_FWD * qkv + REPAD_BYTES_FWD * q_elements,
            UNPAD_BYTES_BWD * qkv + REPAD_BYTES_BWD * q_elements)
