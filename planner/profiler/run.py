"""`planner profile`: measures this machine's kernels and links and returns a HardwareProfile.

Every rank (N local processes spawned here, or the ranks of a torchrun launch) runs the same
kernel sweep at the same time, one case per barrier, so each "device" is timed as a training
job's rank sees it (on a CPU the ranks share the cores; on GPUs each has its own). The kernel
medians are then taken across ranks, the collectives are timed per tier, alpha-beta curves are
fitted, and rank 0 builds the profile (profiler_kernels / profiler_links hold the measuring).
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.progress import Progress, TaskID

from planner.profiler import host as ph
from planner.profiler.build import build_profile, host_workload
from planner.profiler import kernels as pk
from planner.profiler import links as pl
from planner.profiler import pairs as pp
from planner.hardware import (
    DeviceKind,
    HardwareProfile,
    load_profile,
)
from planner.profiler.config import ProfileConfig, RankReport
from planner.report import check_output_file, write_file
from planner.scenario import LinkTable, load_scenario

Tick = Callable[[str], None]


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
    try:
        while not done:
            done = procs.join(timeout=0.1)
            while not queue.empty():
                kind, payload = queue.get()
                if kind == "tick":
                    tick(payload)
                else:
                    report = payload
    except BaseException:  # Ctrl-C / SIGTERM (raised by the CLI) or a failed rank: no rank outlives us
        for proc in procs.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
        raise
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
    kernels, too_slow = _kernel_sweep(cases, sweep=sweep, device=device, tick=tick)
    links = [r for tg in tiers for r in pl.measure_tier(tg, sweep=link_sweep, device=device, tick=tick)]
    pairs = _pair_table(config, world_size=world_size, local_world_size=local_world_size, device=device, tick=tick)
    host = [] if config.cuda else _host_probe(config, tick=tick)
    return RankReport(kernels=kernels, links=links, world_size=world_size, threads=threads,
                      skipped_kernels=len(all_cases) - len(cases) + too_slow, host=host, pairs=pairs)


def _pair_table(config: ProfileConfig, *, world_size: int, local_world_size: int, device: torch.device,
                tick: Tick) -> LinkTable | None:
    if not config.pair_links or world_size == 1:
        return None
    tick("node pairs")
    cases = pp.pair_cases(world_size=world_size, local_world_size=local_world_size)
    samples = pp.measure_pairs(cases, sizes=pp.pair_sizes(quick=config.quick), device=device)
    return pp.link_table(samples, world_size=world_size, local_world_size=local_world_size) if samples else None


def _host_probe(config: ProfileConfig, *, tick: Tick) -> list[ph.HostSamples]:
    """Host overhead probes on every rank (CPU only: on GPUs launches overlap the kernels)."""
    tick("host overhead per op")
    spec, seq, precision = host_workload(config)
    mine = ph.measure_host(spec, seq_len=seq, dtype=pk.TORCH_DTYPES[precision], repeats=3 if config.quick else 9)
    if not dist.is_initialized():
        return [mine]
    every: list[ph.HostSamples | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [s for s in every if s is not None]


def _kernel_sweep(cases: list[pk.KernelCase], *, sweep: pk.KernelSweep, device: torch.device,
                  tick: Tick) -> tuple[list[pk.KernelResult], int]:
    """Each case on every rank at once; per-case median across ranks. A case whose one call would
    outlast sweep.max_call_s at the best FLOP rate measured so far for its op and dtype is skipped
    on every rank alike (a MAX all-reduce of the ranks' verdicts, which is also the per-case
    barrier). Returns the results and the count skipped."""
    distributed = dist.is_initialized()
    mine, best_rate, skipped = [], {}, 0
    for case in cases:
        rate = best_rate.get((case.op, case.dtype))
        verdict = torch.tensor([float(rate is not None and case.flops / rate > sweep.max_call_s)], device=device)
        if distributed:
            dist.all_reduce(verdict, op=dist.ReduceOp.MAX)
        slow = bool(verdict.item())
        tick(f"{case.op.value} {case.dtype.value} {'x'.join(map(str, case.shape))}{' (skipped)' if slow else ''}")
        if slow:
            skipped += 1
            continue
        result = pk.run_case(case, sweep=sweep, device=device)
        if case.flops > 0:
            achieved = case.flops / max(result.timing.median_us * 1e-6, 1e-12)
            best_rate[(case.op, case.dtype)] = max(achieved, rate or 0.0)
        mine.append(result)
    if not distributed:
        return mine, skipped
    every: list[list[pk.KernelResult]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, mine)
    return [_median_across(list(per_rank)) for per_rank in zip(*every, strict=True)], skipped


def _median_across(results: list[pk.KernelResult]) -> pk.KernelResult:
    """The rank whose median is the median (keeps its own spread)."""
    ordered = sorted(results, key=lambda r: r.timing.median_us)
    return ordered[(len(ordered) - 1) // 2]


# -- building the profile ----------------------------------------------------------------------


def write_profile(profile: HardwareProfile, path: Path) -> HardwareProfile:
    """Write atomically (temp file, validate by loading it back, rename) and return the reloaded profile."""
    return write_file(path, profile.model_dump_json(indent=1), validate=load_profile)


def summary_rows(profile: HardwareProfile) -> list[tuple[str, str]]:
    """(quantity, value) lines for the CLI table: peaks, bandwidth, collective fits."""
    rows = [(f"peak {p.value}", f"{t * 1e3:.1f} GFLOP/s") for p, t in sorted(profile.peak_tflops.items())]
    rows.append(("memory bandwidth", f"{profile.memory_bandwidth_gbs:.1f} GB/s x {profile.memory_bound_efficiency:.2f}"))
    for fit in profile.collectives:
        rows.append((f"{fit.collective.value} {fit.tier.value} x{fit.num_ranks}",
                     f"{fit.latency_us:.0f} us + bytes / {fit.bandwidth_gbs:.2f} GB/s"))
    for pair in profile.links.pairs if profile.links else ():
        rail = "" if pair.rail is None else f" rail {pair.rail}"
        rows.append((f"link nodes {pair.nodes[0]}-{pair.nodes[1]}{rail}",
                     f"{pair.latency_us:.0f} us + bytes / {pair.bandwidth_gbs:.2f} GB/s"))
    return rows


def config_from_cli(*, out: Path, nproc: int, device: str | None, scenarios: list[Path], quick: bool,
                    threads: int | None = None, links: bool = False) -> ProfileConfig:
    """Validate `planner profile` arguments; ValueError names the flag to fix."""
    check_output_file(out, flag="--out", suffix=".json")  # before minutes of measuring
    if device is None:
        kind = DeviceKind.CUDA if torch.cuda.is_available() else DeviceKind.CPU
    elif device in (DeviceKind.CUDA.value, DeviceKind.CPU.value):
        kind = DeviceKind(device)
    else:
        raise ValueError(f"--device: '{device}' is not one of cuda, cpu")

    if threads is not None and threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {threads}")
    if links and nproc < 2:
        raise ValueError("--links: needs at least two ranks (--nproc 2 or more, or a multi-node torchrun)")
    return ProfileConfig(name=out.stem, device=kind, nproc=nproc, quick=quick, threads=threads, pair_links=links,
                         scenarios=tuple(load_scenario(p) for p in scenarios))
