"""`planner profile`: measures this machine's kernels and links and returns a HardwareProfile.

Every rank (N local processes spawned here, or the ranks of a torchrun launch) runs the same
kernel sweep at the same time, one case per barrier, so each "device" is timed as a training
job's rank sees it (on a CPU the ranks share the cores; on GPUs each has its own). The kernel
medians are then taken across ranks, the collectives are timed per tier, alpha-beta curves are
fitted, and rank 0 builds the profile (profiler_kernels / profiler_links hold the measuring).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.progress import Progress, TaskID

from planner import profiler_host as ph
from planner import profiler_kernels as pk
from planner import profiler_links as pl
from planner.clusters import GPU_PRESETS
from planner.models import PRESETS
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
    load_profile,
)
from planner.scenario import GpuSpec, ModelSpec, Precision, Scenario

_MIN_EFFICIENCY = 1e-4
_CURVE_BUCKET = 1.1  # samples whose FLOPs lie within 10% share one curve point (median efficiency)
_MEMORY_BUCKET = 2.0  # memory ops of one tensor size (2- and 3-pass ops) share one point
Tick = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileConfig:
    name: str
    device: DeviceKind
    nproc: int = 2
    quick: bool = False
    scenarios: tuple[Scenario, ...] = ()
    threads: int | None = None  # CPU threads per rank; None = cores // ranks

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"--nproc: must be >= 1, got {self.nproc}")
        if self.device == DeviceKind.CUDA and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu")
        if self.device == DeviceKind.CUDA and self.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {self.nproc}: only {torch.cuda.device_count()} CUDA devices; lower --nproc")

    @property
    def cuda(self) -> bool:
        return self.device != DeviceKind.CPU

    def threads_per_rank(self, world_size: int) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // world_size)


@dataclass(slots=True, kw_only=True)
class RankReport:
    """What rank 0 sends home: medians across ranks and its own link timings."""

    kernels: list[pk.KernelResult]
    links: list[pl.LinkResult]
    world_size: int
    threads: int
    skipped_kernels: int
    host: list[ph.HostSamples] = field(default_factory=list)  # one per rank (CPU runs)
    notes: list[str] = field(default_factory=list)
    runtime_bytes: float = 0.0  # resident set after torch import + process-group init (CPU)


def profile_machine(config: ProfileConfig, *, progress: Progress | None = None) -> HardwareProfile | None:
    """Measure and build the profile. Under torchrun only rank 0 returns it (others get None)."""
    if _under_torchrun():
        report = _run_rank(config, tick=_progress_tick(progress) if _rank() == 0 else _no_tick)
        return build_profile(report, config) if _rank() == 0 else None
    if config.nproc == 1:
        runtime_bytes = _resident_bytes()
        report = _measure(config, world_size=1, local_world_size=1, tick=_progress_tick(progress))
        report.runtime_bytes = runtime_bytes
        return build_profile(report, config)
    return build_profile(_spawn(config, progress), config)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _no_tick(_: str) -> None:
    return None


def _progress_tick(progress: Progress | None) -> Tick:
    """A tick that advances one rich task; the first message ("total N") sets its length."""
    if progress is None:
        return _no_tick
    task: TaskID = progress.add_task("profiling", total=None)

    def tick(message: str) -> None:
        if message.startswith("total "):
            progress.update(task, total=int(message.split()[1]))
        else:
            progress.update(task, advance=1, description=message)

    return tick


# -- process management ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(config: ProfileConfig, progress: Progress | None) -> RankReport:
    """Start nproc local ranks; relay rank 0's progress ticks and collect its report."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = mp.start_processes(_spawn_worker, args=(config, _free_port(), queue), nprocs=config.nproc,
                               join=False, start_method="spawn")
    tick = _progress_tick(progress)
    report: RankReport | None = None
    done = False
    while not done:
        done = procs.join(timeout=0.1)
        while not queue.empty():
            kind, payload = queue.get()
            if kind == "tick":
                tick(payload)
            else:
                report = payload
    assert report is not None, "rank 0 exited without a report"
    return report


def _spawn_worker(rank: int, config: ProfileConfig, port: int, queue: mp.Queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(config.nproc), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(config.nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tick: Tick = (lambda msg: queue.put(("tick", msg))) if rank == 0 else _no_tick
    report = _run_rank(config, tick=tick)
    if rank == 0:
        queue.put(("report", report))


def _run_rank(config: ProfileConfig, *, tick: Tick) -> RankReport:
    """Join the process group from the env:// variables, measure, leave cleanly."""
    world, local_world = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if config.cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if config.cuda else "gloo", init_method="env://")
    runtime_bytes = _resident_bytes()
    try:
        report = _measure(config, world_size=world, local_world_size=local_world, tick=tick)
        report.runtime_bytes = runtime_bytes
        return report
    finally:
        dist.barrier()  # without it, teardown can race another rank's last collective
        dist.destroy_process_group()


def _resident_bytes() -> float:
    """Peak resident set so far (ru_maxrss, KiB on Linux): the quantity the executor reports on a CPU."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _measure(config: ProfileConfig, *, world_size: int, local_world_size: int, tick: Tick) -> RankReport:
    threads = config.threads_per_rank(local_world_size)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 GEMMs as frameworks run them (TF32)
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda", torch.cuda.current_device()) if config.cuda else torch.device("cpu")
    sweep = pk.default_sweep(cuda=config.cuda, quick=config.quick)
    all_cases = list(pk.sweep_cases(sweep, list(config.scenarios)))
    cases = [c for c in all_cases if c.flops <= sweep.max_flops]
    link_sweep = pl.default_link_sweep(cuda=config.cuda, quick=config.quick)
    tiers = pl.tier_groups(world_size=world_size, local_world_size=local_world_size) if world_size > 1 else []
    tick(f"total {len(cases) + len(tiers) * len(pl.link_cases(link_sweep)) + (not config.cuda)}")
    kernels = _kernel_sweep(cases, sweep=sweep, device=device, tick=tick)
    links = [r for tg in tiers for r in pl.measure_tier(tg, sweep=link_sweep, device=device, tick=tick)]
    host = [] if config.cuda else _host_probe(config, tick=tick)
    return RankReport(kernels=kernels, links=links, world_size=world_size, threads=threads,
                      skipped_kernels=len(all_cases) - len(cases), host=host)


def _host_workload(config: ProfileConfig) -> tuple[ModelSpec, int, Precision]:
    """The model the host probe runs: the first --scenario's, else tiny-dense at 256 tokens in fp32."""
    if config.scenarios:
        sc = config.scenarios[0]
        return sc.model, sc.job.seq_len, sc.job.precision
    return PRESETS["tiny-dense"], HOST_DEFAULT_SEQ, Precision.FP32


HOST_DEFAULT_SEQ = 256


def _host_probe(config: ProfileConfig, *, tick: Tick) -> list[ph.HostSamples]:
    """Host overhead probes on every rank (CPU only: on GPUs launches overlap the kernels)."""
    tick("host overhead per op")
    spec, seq, precision = _host_workload(config)
    mine = ph.measure_host(spec, seq_len=seq, dtype=pk.TORCH_DTYPES[precision], repeats=3 if config.quick else 9)
    if not dist.is_initialized():
        return [mine]
    every: list[ph.HostSamples | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [s for s in every if s is not None]


def _kernel_sweep(cases: list[pk.KernelCase], *, sweep: pk.KernelSweep, device: torch.device,
                  tick: Tick) -> list[pk.KernelResult]:
    """Each case on every rank at once (a barrier per case); per-case median across ranks."""
    distributed = dist.is_initialized()
    mine = []
    for case in cases:
        tick(f"{case.op.value} {case.dtype.value} {'x'.join(map(str, case.shape))}")
        if distributed:
            dist.barrier()
        mine.append(pk.run_case(case, sweep=sweep, device=device))
    if not distributed:
        return mine
    every: list[list[pk.KernelResult]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, mine)
    return [_median_across(list(per_rank)) for per_rank in zip(*every, strict=True)]


def _median_across(results: list[pk.KernelResult]) -> pk.KernelResult:
    """The rank whose median is the median (keeps its own spread)."""
    ordered = sorted(results, key=lambda r: r.timing.median_us)
    return ordered[(len(ordered) - 1) // 2]


# -- building the profile ----------------------------------------------------------------------


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
    )
    return kernels_only.model_copy(update={"host": _host_overhead(report, config, kernels_only)})


def _host_overhead(report: RankReport, config: ProfileConfig, kernels_only: HardwareProfile) -> HostOverhead:
    """Fitted from the probes on a CPU; on GPUs the launch default (async launches overlap kernels)."""
    if not report.host:
        return HostOverhead(fwd_us_per_op=GPU_LAUNCH_US, bwd_us_per_op=2 * GPU_LAUNCH_US, overlapped=True)
    spec, _, precision = _host_workload(config)
    return ph.fit_host(report.host, spec=spec, precision=precision, kernels=kernels_only)


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
        f"{len(report.kernels)} kernels ({report.skipped_kernels} skipped above the FLOP cap), "
        f"{len(report.links)} collective timings",
        "kernels: every rank times each case at once (barrier per case), median of repeats per rank, "
        "then the median rank; CUDA events on GPU, perf_counter on CPU",
        "peaks: datasheet for a known GPU, else the best measured rate per precision (efficiency <= 1)",
        "collectives: slowest rank per sample, median of samples; alpha-beta by Huber-weighted least "
        "squares on relative error; bus bandwidth as in NVIDIA nccl-tests PERFORMANCE.md",
        *report.notes,
    ]


def write_profile(profile: HardwareProfile, path: Path) -> HardwareProfile:
    """Write atomically (temp file, validate by loading it back, rename) and return the reloaded profile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(profile.model_dump_json(indent=1))
        tmp = Path(f.name)
    try:
        loaded = load_profile(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return loaded


def summary_rows(profile: HardwareProfile) -> list[tuple[str, str]]:
    """(quantity, value) lines for the CLI table: peaks, bandwidth, collective fits."""
    rows = [(f"peak {p.value}", f"{t * 1e3:.1f} GFLOP/s") for p, t in sorted(profile.peak_tflops.items())]
    rows.append(("memory bandwidth", f"{profile.memory_bandwidth_gbs:.1f} GB/s x {profile.memory_bound_efficiency:.2f}"))
    for fit in profile.collectives:
        rows.append((f"{fit.collective.value} {fit.tier.value} x{fit.num_ranks}",
                     f"{fit.latency_us:.0f} us + bytes / {fit.bandwidth_gbs:.2f} GB/s"))
    return rows


def config_from_cli(*, out: Path, nproc: int, device: str | None, scenarios: list[Path], quick: bool,
                    threads: int | None = None) -> ProfileConfig:
    """Validate `planner profile` arguments; ValueError names the flag to fix."""
    if out.suffix != ".json":
        raise ValueError(f"--out: {out} should end in .json (profiles/NAME.json)")
    if device is None:
        kind = DeviceKind.CUDA if torch.cuda.is_available() else DeviceKind.CPU
    elif device in (DeviceKind.CUDA.value, DeviceKind.CPU.value):
        kind = DeviceKind(device)
    else:
        raise ValueError(f"--device: '{device}' is not one of cuda, cpu")
    from planner.scenario import load_scenario

    if threads is not None and threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {threads}")
    return ProfileConfig(name=out.stem, device=kind, nproc=nproc, quick=quick, threads=threads,
                         scenarios=tuple(load_scenario(p) for p in scenarios))
