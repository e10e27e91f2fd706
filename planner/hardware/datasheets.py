"""Datasheet profiles: a HardwareProfile from a cluster's published numbers, for GPUs not measured here."""

from __future__ import annotations

import datetime

from planner.hardware.profile import (
    Collective, CollectiveFit, Curve, DeviceInfo, DeviceKind, FlashRates, GemmRates, GemmTile, HardwareProfile,
    HostOverhead, ProfileSource, Tier,
)
from planner.scenario import ClusterSpec, GpuFamily, GpuSpec

_TFLOP = 1e12


# -- datasheet defaults ------------------------------------------------------------------------
# Efficiency model: a GEMM of F flops takes t = F / (ceiling * peak) + t0, i.e.
# efficiency(F) = ceiling * F / (F + ceiling * peak * t0). t0 is the fixed per-kernel cost
# (launch + tail wave); ceiling is the large-GEMM fraction of the dense datasheet peak that
# training sustains (below a cold microbenchmark: clocks drop under sustained power, shapes are
# not all multiples of 256). Sources: cuBLAS bf16 GEMM sweeps (NVIDIA "Matrix multiplication
# background" guide: A100 8192^3 ~250-270 of 312 TFLOP/s cold; H100 SXM ~700-750 of 989),
# AMD MI300X hipBLASLt (~650-750 of 1307, Chips and Cheese / SemiAnalysis 2024), B200
# ~1500-1650 of 2250. These are the only constants fitted end to end (`planner validate --loso`
# refits them per GPU family, leaving out one source at a time): with the kernel models of
# cost/kernels.py the published rows keep A100 at 0.76 (52 rows, MAPE flat within 0.74-0.76) and
# H100 at 0.67 (87 rows), i.e. the cold microbenchmark times the ~0.93 sustained/cold clock ratio
# (H100: 700-750 x 0.93 = 650-700 of 989). H800/H200 share the H100 die (H200 +0.02 for its
# higher power limit, as before); the rest are the microbenchmark numbers times 0.93.
GEMM_CEILING = {"a100": 0.76, "h100": 0.67, "h800": 0.67, "h200": 0.69, "b200": 0.72, "gb200": 0.72,
                "mi250x": 0.55, "mi300x": 0.55, "cpu": 0.9}
GEMM_FIXED_COST_S = 6e-6  # per-kernel overhead (launch ~3 us + partial last wave), Nsight traces of GEMMs
# Flash attention (FA2 paper, Dao 2023: fwd+bwd 50-73% of A100 peak at head dim 128; on H100 FA2
# reaches ~35-45%, cuDNN/FA3 ~55-65%). Ratio to the GEMM ceiling of the same GPU.
ATTENTION_TO_GEMM_RATIO = 0.80
ATTENTION_FIXED_COST_S = 2e-5  # softmax bookkeeping, several kernels per call (fwd + bwd)
# Streaming kernels on large tensors reach ~85-90% of the HBM datasheet bandwidth (BabelStream
# copy/triad: A100-80GB ~1.75-1.8 of 2.04 TB/s, H100 SXM ~2.9-3.0 of 3.35 TB/s; NVIDIA
# nvbandwidth device-local copy). Vectorised PyTorch pointwise kernels on training-sized tensors
# run at the same rate; what fusion saves is the number of passes (cost/ops._elementwise_run).
MEMORY_BOUND_EFFICIENCY = 0.87
# nccl-tests bus bandwidth relative to the per-direction link rate: NVLink/NVSwitch all-reduce
# ~0.80 (A100: ~230 of 300 GB/s; H100: ~360-380 of 450), InfiniBand ~0.85-0.90 of line rate.
INTRA_NODE_BUS_EFFICIENCY = 0.80
INTER_NODE_BUS_EFFICIENCY = 0.85
_CURVE_DECADES = range(6, 15)  # 1e6 .. 1e14 FLOPs per call
# Host cost of one eager op on a GPU: a CUDA kernel launch takes ~4-6 us of CPU time (NVIDIA
# "Getting Started with CUDA Graphs" blog 2019; CUDA C++ Best Practices Guide, "Asynchronous
# and Overlapping Transfers"); the backward launches about two kernels per forward op. Launches
# are asynchronous, so this only shows when kernels are shorter than their launches.
GPU_LAUNCH_US = 5.0


def gemm_ceiling(gpu: GpuSpec) -> float:
    """The large-GEMM fraction of peak for this GPU family (0.7 for unknown accelerators)."""
    return GEMM_CEILING.get(gpu.family.value, 0.70)


def _saturating_curve(*, ceiling: float, peak_flops: float, fixed_s: float) -> Curve:
    pts = []
    for decade in _CURVE_DECADES:
        flops = 10.0**decade
        pts.append((flops, ceiling * flops / (flops + ceiling * peak_flops * fixed_s)))
    return Curve(points=[(x, max(y, 1e-4)) for x, y in pts])


def _collective_fits(cluster: ClusterSpec) -> list[CollectiveFit]:
    net = cluster.network
    fits = []
    for tier, gbs, lat, eff in (
        (Tier.INTRA_NODE, net.intra_node_gbs, net.intra_node_latency_us, INTRA_NODE_BUS_EFFICIENCY),
        (Tier.INTER_NODE, net.inter_node_gbs, net.inter_node_latency_us, INTER_NODE_BUS_EFFICIENCY),
    ):
        for coll in Collective:
            fits.append(CollectiveFit(collective=coll, tier=tier, num_ranks=8, latency_us=lat,
                                      bandwidth_gbs=gbs * eff))
    return fits


def datasheet_profile(cluster: ClusterSpec, *, ceiling: float | None = None) -> HardwareProfile:
    """A profile from the cluster's datasheet numbers and the calibrated efficiency model above.

    `ceiling` replaces the family's large-GEMM ceiling (GEMM_CEILING; `planner validate --loso`
    refits it); the part's sustained clock ratio scales it either way.
    """
    gpu = cluster.gpu
    ceiling = (gemm_ceiling(gpu) if ceiling is None else ceiling) * gpu.sustained_clock_ratio
    matmul, attention = {}, {}
    for prec, tflops in gpu.peak_tflops.items():
        peak = tflops * _TFLOP
        matmul[prec] = _saturating_curve(ceiling=ceiling, peak_flops=peak, fixed_s=GEMM_FIXED_COST_S)
        attention[prec] = _saturating_curve(ceiling=ceiling * ATTENTION_TO_GEMM_RATIO, peak_flops=peak,
                                            fixed_s=ATTENTION_FIXED_COST_S)
    return HardwareProfile(
        name=f"{gpu.name}-datasheet", source=ProfileSource.DATASHEET, citations=list(DATASHEET_CITATIONS),
        created=datetime.date.today().isoformat(),
        device=DeviceInfo(name=gpu.name, kind=_kind(gpu), num_devices=cluster.world_size, family=gpu.family),
        peak_tflops=dict(gpu.peak_tflops), memory_gib=gpu.memory_gib, memory_bandwidth_gbs=gpu.memory_bandwidth_gbs,
        matmul_efficiency=matmul, attention_efficiency=attention,
        memory_bound_efficiency=MEMORY_BOUND_EFFICIENCY, collectives=_collective_fits(cluster),
        host=_datasheet_host(gpu), gemm=datasheet_gemm(sm_count=gpu.sm_count, ceiling=ceiling,
                                                       fixed_us=GEMM_FIXED_COST_S * 1e6),
        flash=datasheet_flash(gpu.family.value, clock_ratio=gpu.sustained_clock_ratio),
    )


def _datasheet_host(gpu: GpuSpec) -> HostOverhead | None:
    """Launch cost for accelerators; None for a CPU (its dispatch cost must be measured)."""
    if _kind(gpu) == DeviceKind.CPU:
        return None
    return HostOverhead(fwd_us_per_op=GPU_LAUNCH_US, bwd_us_per_op=2 * GPU_LAUNCH_US, overlapped=True)


def _kind(gpu: GpuSpec) -> DeviceKind:
    if gpu.family.rocm:
        return DeviceKind.ROCM
    return DeviceKind.CPU if gpu.family == GpuFamily.CPU else DeviceKind.CUDA


DATASHEET_CITATIONS = (
    "NVIDIA A100/H100/H200/B200 datasheets (dense tensor-core peaks, HBM size and bandwidth)",
    "AMD Instinct MI300X datasheet (1307 TFLOP/s bf16 dense, 192 GB HBM3 5.3 TB/s)",
    "NVIDIA Deep Learning Performance guide, 'Matrix Multiplication Background' (tile and wave quantisation)",
    "Dao 2023, FlashAttention-2 (arXiv 2307.08691), fwd+bwd attention efficiency by sequence and head size",
    "Shah et al. 2024, FlashAttention-3 (arXiv 2407.08608): FA2 vs FA3/cuDNN rates on H100",
    "BabelStream / NVIDIA nvbandwidth: achievable HBM bandwidth of streaming kernels",
    "NVIDIA cuBLAS 12 blog (2023): H100 FP8 vs BF16 GEMM throughput",
    "NVIDIA nccl-tests PERFORMANCE.md (bus bandwidth definition and ring factors)",
    "NVIDIA 'Getting Started with CUDA Graphs' (2019): ~4-6 us CPU launch overhead per kernel",
    "Narayanan et al. 2021 (arXiv 2104.04473) and Korthikanti et al. 2022 (arXiv 2205.05198): "
    "end-to-end calibration of the efficiency constants",
)


# -- datasheet defaults ------------------------------------------------------------------------
# CTA tiles cuBLAS / CUTLASS choose between for 16-bit GEMMs, with per-SM throughput relative to
# the largest: smaller tiles re-read operands more per FLOP and reach a lower fraction of peak
# (NVIDIA "Matrix Multiplication Background" guide, Sec. 6.1 "Tile quantization" and its
# 256x128 vs 64x64 comparison; CUTLASS profiler tile sweeps on A100/H100).
DATASHEET_TILES = (GemmTile(m=128, n=256, efficiency=1.0), GemmTile(m=256, n=128, efficiency=1.0),
                   GemmTile(m=128, n=128, efficiency=0.92), GemmTile(m=64, n=128, efficiency=0.78),
                   GemmTile(m=64, n=64, efficiency=0.6))
GEMM_K_FILL = 128.0  # 2 k-slices of 64 for pipeline fill + epilogue (CUTLASS multistage mainloop)
# FP8 dense GEMMs reach ~0.9 of the 16-bit kernels' fraction of their (2x) peak: H100 cuBLASLt
# FP8 ~1300-1450 of 1979 TFLOP/s vs bf16 ~700-750 of 989 (NVIDIA cuBLAS 12.0 blog, 2023).
FP8_GEMM_RATIO = 0.9
# Long-sequence causal flash attention, head_dim 128, as a fraction of the dense bf16 peak:
# FlashAttention-2 on A100 fwd ~200 / bwd ~160 of 312 TFLOP/s (Dao 2023, Fig. 4-5); on H100
# FA2 fwd ~350 / bwd ~300, FA3 (and cuDNN 9, the kernel TE calls) fwd ~620 / bwd ~490 of 989
# (Shah et al. 2024, FlashAttention-3, Fig. 5-6); Blackwell cuDNN SDPA ~0.6 / 0.45 of its peak,
# FA2 there runs the Ampere mma path (~a quarter of peak). AMD MI300X: CK flash FA2 port.
FLASH_RATES = {
    "a100": {"flash": (0.64, 0.51), "cudnn": (0.64, 0.51)},
    "h100": {"flash": (0.35, 0.30), "cudnn": (0.62, 0.49)},
    "b200": {"flash": (0.25, 0.22), "cudnn": (0.60, 0.45)},
    "mi300x": {"flash": (0.35, 0.25), "cudnn": (0.35, 0.25)},
}
FLASH_FAMILY = {"a100": "a100", "h100": "h100", "h800": "h100", "h200": "h100", "b200": "b200", "gb200": "b200",
                "mi250x": "mi300x", "mi300x": "mi300x"}
# FA2 Fig. 4 (A100, causal, head_dim 128): ~110 TFLOP/s at 512 tokens vs ~200 at 16k -> s/(s + 350).
FLASH_SEQ_HALF = 350.0
# The flash rates above are short benchmark runs at boost clock; a training step holds the GPU at
# its power limit, where tensor clocks settle ~7% lower (the same sustained/cold ratio the GEMM
# ceilings carry, see GEMM_CEILING).
SUSTAINED_TO_COLD_CLOCK = 0.93
FLASH_SMALL_HEAD_RATIO = 0.85  # head_dim 64 vs 128 in the same figures
# Kernels that run a persistent grid (one CTA per SM looping over tiles): FlashAttention-3's Hopper
# kernels (flash-attention hopper/tile_scheduler.hpp, Static/DynamicPersistentTileScheduler, grid =
# SM count) and the cuDNN 9 Hopper/Blackwell SDPA kernels of the same warp-specialised design that TE
# calls; FA2 (and CK's port) launch one CTA per (q-block, head, batch), many waves. An NCCL kernel
# does not share an SM with a compute kernel (NVIDIA/nccl issue #689, maintainer): queued behind a
# persistent kernel it starts only when that kernel ends (NVIDIA/nccl issue #1431); launched first
# (Megatron's CUDA_DEVICE_MAX_CONNECTIONS=1 keeps launch order), it holds SMs whose persistent CTAs,
# each with a fixed tile list (static scheduler), start only when it ends. Either way the two run
# about in series.
FLASH_PERSISTENT = {("h100", "cudnn"), ("b200", "cudnn")}


def datasheet_gemm(*, sm_count: int | None, ceiling: float, fixed_us: float) -> GemmRates | None:
    if sm_count is None:
        return None
    return GemmRates(sm_count=sm_count, ceiling=ceiling, fp8_ratio=FP8_GEMM_RATIO, k_fill=GEMM_K_FILL,
                     fixed_us=fixed_us, tiles=list(DATASHEET_TILES))


def datasheet_flash(family: str, *, clock_ratio: float) -> dict[str, FlashRates]:
    """Flash rates per attention implementation for a GPU family, scaled by its sustained clock."""
    kind = FLASH_FAMILY.get(family, "")
    table = FLASH_RATES.get(kind, {})
    clock_ratio *= SUSTAINED_TO_COLD_CLOCK
    return {impl: FlashRates(fwd=fwd * clock_ratio, bwd=bwd * clock_ratio, seq_half=FLASH_SEQ_HALF,
                             small_head_ratio=FLASH_SMALL_HEAD_RATIO, persistent=(kind, impl) in FLASH_PERSISTENT)
            for impl, (fwd, bwd) in table.items()}
