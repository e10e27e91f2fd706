"""Turns a profiler run's raw measurements into a validated HardwareProfile: peaks and efficiency
curves from the kernel samples, alpha-beta fits per collective and tier, host overheads, and the
device facts (name, versions, memory) with citations. The measuring lives in planner/profiler*.py.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import numpy as np
import torch

from planner.profiler.host_fit import fit_host
from planner.profiler import kernels as pk
from planner.profiler import links as pl
from planner.scenario import GPU_PRESETS
from planner.scenario import PRESETS
from planner.hardware import (
    GPU_LAUNCH_US,
    Collective,
    CollectiveFit,
    CollectiveSample,
    Curve,
    DeviceInfo,
    DeviceKind,
    HardwareProfile,
    HostOverhead,
    KernelSample,
    ProfileSource,
)
from planner.scenario import GpuSpec, ModelSpec, Precision
from planner.profiler.config import ProfileConfig, RankReport

_MIN_EFFICIENCY = 1e-4
_CURVE_BUCKET = 1.1  # samples whose FLOPs lie within 10% share one curve point (median efficiency)
_MEMORY_BUCKET = 2.0  # memory ops of one tensor size (2- and 3-pass ops) share one point


def build_profile(report: RankReport, config: ProfileConfig) -> HardwareProfile:
    """Turn raw timings into peaks, efficiency curves, bandwidth and collective fits."""
    datasheet = _datasheet_gpu(_device_name(config)) if config.cuda else None
    peaks = _peaks_tflops(report.kernels, datasheet)
    bandwidth_gbs, mem_eff = _memory_bandwidth(report.kernels, datasheet)
    kernels_only = HardwareProfile(
        name=config.name, source=ProfileSource.MEASURED, citations=_citations(report, config),
        created=datetime.date.today().isoformat(),
        device=DeviceInfo(name=_device_name(config), kind=_device_kind(config), torch_version=torch.__version__,
                          driver_version=_driver_version(config), num_devices=report.world_size),
        peak_tflops=peaks, memory_gib=_memory_gib(config, report.world_size), memory_bandwidth_gbs=bandwidth_gbs,
        matmul_efficiency=_curves(report.kernels, pk.KernelOp.MATMUL, peaks),
        attention_efficiency=_curves(report.kernels, pk.KernelOp.ATTENTION, peaks),
        memory_bound_efficiency=mem_eff,
        memory_bound_curve=_memory_curve(report.kernels, bandwidth_gbs),
        kernel_samples=[_sample(r) for r in report.kernels],
        collectives=collective_fits(report.links),
        runtime_bytes=0.0 if config.cuda else report.runtime_bytes,  # see HardwareProfile.runtime_bytes
        links=report.pairs,
    )
    return kernels_only.model_copy(update={"host": _host_overhead(report, config, kernels_only)})


def _host_overhead(report: RankReport, config: ProfileConfig, kernels_only: HardwareProfile) -> HostOverhead:
    """Fitted from the probes on a CPU; on GPUs the launch default (async launches overlap kernels)."""
    if not report.host:
        return HostOverhead(fwd_us_per_op=GPU_LAUNCH_US, bwd_us_per_op=2 * GPU_LAUNCH_US, overlapped=True)
    spec, _, precision = host_workload(config)
    return fit_host(report.host, spec=spec, precision=precision, kernels=kernels_only)


def _achieved_tflops(r: pk.KernelResult) -> float:
    return r.flops / r.timing.median_us / 1e6


def _peaks_tflops(kernels: list[pk.KernelResult], datasheet: GpuSpec | None) -> dict[Precision, float]:
    """Datasheet peaks for a known GPU, else the best measured rate (so efficiencies are <= 1)."""
    peaks = {}
    for prec in {r.dtype for r in kernels if r.flops > 0}:
        best = max(_achieved_tflops(r) for r in kernels if r.dtype == prec and r.flops > 0)
        sheet = datasheet.peak_tflops.get(prec) if datasheet else None
        peaks[prec] = max(sheet or 0.0, best)
    return peaks


def _curves(kernels: list[pk.KernelResult], op: pk.KernelOp, peaks: dict[Precision, float]) -> dict[Precision, Curve]:
    """Efficiency vs FLOPs per call; samples within 10% of FLOPs merge into one median point."""
    curves = {}
    for prec, peak in peaks.items():
        pts = sorted((r.flops, _achieved_tflops(r) / peak) for r in kernels if r.op == op and r.dtype == prec)
        if pts:
            curves[prec] = Curve(points=_merge_points(pts, bucket=_CURVE_BUCKET))
    return curves


def _merge_points(pts: list[tuple[float, float]], *, bucket: float) -> list[tuple[float, float]]:
    """Sorted (x, y) samples -> one point per run of x within a factor `bucket` (geometric-mean x, median y)."""
    merged, run = [], [pts[0]]
    for x, y in pts[1:]:
        if x < run[0][0] * bucket:
            run.append((x, y))
        else:
            merged.append(_bucket_point(run))
            run = [(x, y)]
    merged.append(_bucket_point(run))
    return merged


def _bucket_point(bucket: list[tuple[float, float]]) -> tuple[float, float]:
    xs, ys = np.array(bucket).T
    return float(np.exp(np.log(xs).mean())), float(np.clip(np.median(ys), _MIN_EFFICIENCY, 1.0))


def _memory_bandwidth(kernels: list[pk.KernelResult], datasheet: GpuSpec | None) -> tuple[float, float]:
    """(bandwidth GB/s, efficiency): datasheet bandwidth for a known GPU, else the best rate any
    memory-bound op reached; efficiency = the median op and size over it. The sizes span in-cache
    to out-of-cache tensors on a CPU, so the one number is a typical op, not a STREAM peak."""
    mem = [r for r in kernels if r.op.memory_bound]
    assert mem, "the sweep always times memory-bound ops"
    rates = [r.bytes / r.timing.median_us / 1e3 for r in mem]
    bandwidth = datasheet.memory_bandwidth_gbs if datasheet else max(rates)
    return bandwidth, float(np.clip(np.median(rates) / bandwidth, _MIN_EFFICIENCY, 1.0))


def _memory_curve(kernels: list[pk.KernelResult], bandwidth_gbs: float) -> Curve:
    """Efficiency vs bytes per call of the memory-bound ops (median op at each tensor size)."""
    pts = [(r.bytes, r.bytes / r.timing.median_us / 1e3 / bandwidth_gbs) for r in kernels if r.op.memory_bound]
    return Curve(points=_merge_points(sorted(pts), bucket=_MEMORY_BUCKET))


def collective_fits(links: list[pl.LinkResult]) -> list[CollectiveFit]:
    """One alpha-beta fit per (collective, tier, group size), over the traffic each rank moves."""
    keys = sorted({(r.collective, r.tier, r.num_ranks) for r in links})
    fits = []
    for collective, tier, n in keys:
        rows = sorted((r.size_bytes, r.median_us) for r in links
                      if (r.collective, r.tier, r.num_ranks) == (collective, tier, n))
        factor = Collective(collective).traffic_factor(n)
        latency_us, bandwidth_gbs = pl.fit_alpha_beta([s * factor for s, _ in rows], [t for _, t in rows])
        fits.append(CollectiveFit(collective=collective, tier=tier, num_ranks=n, latency_us=latency_us,
                                  bandwidth_gbs=bandwidth_gbs,
                                  samples=[CollectiveSample(size_bytes=s, median_us=t) for s, t in rows]))
    return fits


def _sample(r: pk.KernelResult) -> KernelSample:
    t = r.timing
    return KernelSample(op=r.op.value, shape=list(r.shape), dtype=r.dtype.value, flops=r.flops, bytes=r.bytes,
                        median_us=t.median_us, p10_us=t.p10_us, p90_us=t.p90_us, repeats=t.repeats)


# -- device facts ------------------------------------------------------------------------------


def _device_kind(config: ProfileConfig) -> DeviceKind:
    if not config.cuda:
        return DeviceKind.CPU
    return DeviceKind.ROCM if torch.version.hip else DeviceKind.CUDA


def _device_name(config: ProfileConfig) -> str:
    if config.cuda:
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
                 platform.processor() or "cpu")
    return f"{model} ({os.cpu_count()} cores)"


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _driver_version(config: ProfileConfig) -> str | None:
    if not config.cuda:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    runtime = f"cuda {torch.version.cuda}" if torch.version.cuda else f"hip {torch.version.hip}"
    return f"{out[0]} ({runtime})" if out else runtime


def _memory_gib(config: ProfileConfig, world_size: int) -> float:
    """Device memory; on a CPU the RAM share of one rank (ranks split the machine's memory)."""
    if config.cuda:
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / 2**30 / world_size


def _datasheet_gpu(device_name: str) -> GpuSpec | None:
    """The GPU preset matching a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100-sxm)."""
    name = device_name.lower().replace(" ", "")
    for key, preset in (("gb200", "gb200"), ("b200", "b200"), ("h200", "h200"), ("h800", "h800-sxm"),
                        ("h100", "h100-sxm"), ("a100-sxm4-40gb", "a100-40gb"), ("a100", "a100-80gb"),
                        ("mi300x", "mi300x"), ("mi250x", "mi250x")):
        if key in name:
            return GPU_PRESETS[preset]
    return None


def _citations(report: RankReport, config: ProfileConfig) -> list[str]:
    return [
        f"measured by `planner profile` on {platform.node() or 'this host'}: {report.world_size} rank(s), "
        f"{report.threads} CPU thread(s) per rank, {'quick' if config.quick else 'full'} sweep, "
        f"{len(report.kernels)} kernels ({report.skipped_kernels} skipped above the FLOP or time cap), "
        f"{len(report.links)} collective timings",
        "kernels: every rank times each case at once (barrier per case), median of repeats per rank, "
        "then the median rank; CUDA events on GPU, perf_counter on CPU",
        "peaks: datasheet for a known GPU, else the best measured rate per precision (efficiency <= 1)",
        "collectives: slowest rank per sample, median of samples; alpha-beta by Huber-weighted least "
        "squares on relative error; bus bandwidth as in NVIDIA nccl-tests PERFORMANCE.md",
        *report.notes,
    ]


def host_workload(config: ProfileConfig) -> tuple[ModelSpec, int, Precision]:
    """The model the host probe runs: the first --scenario's, else tiny-dense at 256 tokens in fp32."""
    if config.scenarios:
        sc = config.scenarios[0]
        return sc.model, sc.job.seq_len, sc.job.precision
    return PRESETS["tiny-dense"], HOST_DEFAULT_SEQ, Precision.FP32


HOST_DEFAULT_SEQ = 256
