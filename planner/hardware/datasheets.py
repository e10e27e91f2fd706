"""Datasheet profiles: a HardwareProfile from a cluster's published numbers, for GPUs not measured here."""

from __future__ import annotations

import datetime

from planner.hardware.profile import (
    Collective, CollectiveFit, Curve, DeviceInfo, DeviceKind, HardwareProfile, HostOverhead, ProfileSource, Tier,
)
from planner.scenario import ClusterSpec, GpuSpec

_TFLOP = 1e12


# -- datasheet defaults ------------------------------------------------------------------------
# Efficiency model: a GEMM of F flops takes t = F / (ceiling * peak) + t0, i.e.
# efficiency(F) = ceiling * F / (F + ceiling * peak * t0). t0 is the fixed per-kernel cost
# (launch + tail wave); ceiling is the large-GEMM fraction of the dense datasheet peak that
# training sustains (below a cold microbenchmark: clocks drop under sustained power, shapes are
# not all multiples of 256). Sources: cuBLAS bf16 GEMM sweeps (NVIDIA "Matrix multiplication
# background" guide: A100 8192^3 ~250-270 of 312 TFLOP/s cold; H100 SXM ~700-750 of 989),
# AMD MI300X hipBLASLt (~650-750 of 1307, Chips and Cheese / SemiAnalysis 2024), B200
# ~1500-1650 of 2250. Calibrated once end to end: A100 0.76 so that llm-foundry's MPT-30B
# (FSDP, flash attention, HFU 0.70; SOURCES.md #11) and Narayanan's weak-scaling rows are met;
# H100 0.74 from the Megatron-Core weak-scaling rows (SOURCES.md #3). The rest are the
# microbenchmark numbers scaled by the same ~0.93 sustained/cold ratio.
GEMM_CEILING = {"a100": 0.76, "h100": 0.74, "h800": 0.74, "h200": 0.76, "b200": 0.72, "gb200": 0.72,
                "mi250x": 0.55, "mi300x": 0.55, "cpu": 0.9}
GEMM_FIXED_COST_S = 6e-6  # per-kernel overhead (launch ~3 us + partial last wave), Nsight traces of GEMMs
# Flash attention (FA2 paper, Dao 2023: fwd+bwd 50-73% of A100 peak at head dim 128; on H100 FA2
# reaches ~35-45%, cuDNN/FA3 ~55-65%). Ratio to the GEMM ceiling of the same GPU.
ATTENTION_TO_GEMM_RATIO = 0.80
ATTENTION_FIXED_COST_S = 2e-5  # softmax bookkeeping, several kernels per call (fwd + bwd)
# STREAM-like kernels reach ~85-90% of HBM bandwidth; PyTorch elementwise ops ~75-85%.
MEMORY_BOUND_EFFICIENCY = 0.80
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
    family = gpu.name.split("-")[0].lower()
    return GEMM_CEILING.get(family, 0.70)


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


def datasheet_profile(cluster: ClusterSpec) -> HardwareProfile:
    """A profile from the cluster's datasheet numbers and the calibrated efficiency model above."""
    gpu = cluster.gpu
    ceiling = gemm_ceiling(gpu)
    matmul, attention = {}, {}
    for prec, tflops in gpu.peak_tflops.items():
        peak = tflops * _TFLOP
        matmul[prec] = _saturating_curve(ceiling=ceiling, peak_flops=peak, fixed_s=GEMM_FIXED_COST_S)
        attention[prec] = _saturating_curve(ceiling=ceiling * ATTENTION_TO_GEMM_RATIO, peak_flops=peak,
                                            fixed_s=ATTENTION_FIXED_COST_S)
    return HardwareProfile(
        name=f"{gpu.name}-datasheet", source=ProfileSource.DATASHEET, citations=list(DATASHEET_CITATIONS),
        created=datetime.date.today().isoformat(),
        device=DeviceInfo(name=gpu.name, kind=_kind(gpu), num_devices=cluster.world_size),
        peak_tflops=dict(gpu.peak_tflops), memory_gib=gpu.memory_gib, memory_bandwidth_gbs=gpu.memory_bandwidth_gbs,
        matmul_efficiency=matmul, attention_efficiency=attention,
        memory_bound_efficiency=MEMORY_BOUND_EFFICIENCY, collectives=_collective_fits(cluster),
        host=_datasheet_host(gpu),
    )


def _datasheet_host(gpu: GpuSpec) -> HostOverhead | None:
    """Launch cost for accelerators; None for a CPU (its dispatch cost must be measured)."""
    if _kind(gpu) == DeviceKind.CPU:
        return None
    return HostOverhead(fwd_us_per_op=GPU_LAUNCH_US, bwd_us_per_op=2 * GPU_LAUNCH_US, overlapped=True)


def _kind(gpu: GpuSpec) -> DeviceKind:
    name = gpu.name.lower()
    if name.startswith("mi"):
        return DeviceKind.ROCM
    return DeviceKind.CPU if name == "cpu" else DeviceKind.CUDA


DATASHEET_CITATIONS = (
    "NVIDIA A100/H100/H200/B200 datasheets (dense tensor-core peaks, HBM size and bandwidth)",
    "AMD Instinct MI300X datasheet (1307 TFLOP/s bf16 dense, 192 GB HBM3 5.3 TB/s)",
    "NVIDIA Deep Learning Performance guide, 'Matrix Multiplication Background' (GEMM efficiency vs size)",
    "Dao 2023, FlashAttention-2 (arXiv 2307.08691), fwd+bwd attention efficiency",
    "NVIDIA nccl-tests PERFORMANCE.md (bus bandwidth definition and ring factors)",
    "NVIDIA 'Getting Started with CUDA Graphs' (2019): ~4-6 us CPU launch overhead per kernel",
    "Narayanan et al. 2021 (arXiv 2104.04473) and Korthikanti et al. 2022 (arXiv 2205.05198): "
    "end-to-end calibration of the efficiency constants",
)
