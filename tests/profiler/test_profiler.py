"""Profiler: real kernel timings (reduced sweep), alpha-beta fits, tier groups, profile files, CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from planner.profiler import kernels as pk
from planner.cli import app
from planner.hardware import Collective, DeviceKind, HardwareProfile, ProfileRangeWarning, Tier, load_profile
from planner.scenario import PRESETS
from planner.profiler import build_profile, collective_fits
from planner.profiler import ProfileConfig, profile_machine, write_profile
from planner.profiler import LinkResult, fit_alpha_beta, tier_groups
from planner.scenario import Precision

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_cpu_profile() -> HardwareProfile:
    """One reduced in-process sweep (no links), shared by the kernel tests (~1 s). One thread:
    two OpenMP threads stall on a core that other processes hold (a shared 2-core machine)."""
    profile = profile_machine(ProfileConfig(name="quick", device=DeviceKind.CPU, nproc=1, quick=True, threads=1))
    assert profile is not None
    return profile


def test_quick_sweep_times_every_kernel_family(quick_cpu_profile: HardwareProfile) -> None:
    ops = {s.op for s in quick_cpu_profile.kernel_samples}
    assert ops == {op.value for op in pk.KernelOp}
    assert {s.dtype for s in quick_cpu_profile.kernel_samples} == {"fp32", "bf16"}  # never fp16 on CPU
    for s in quick_cpu_profile.kernel_samples:
        assert 0 < s.p10_us <= s.median_us <= s.p90_us and s.repeats >= 3
    assert quick_cpu_profile.source == "measured" and quick_cpu_profile.device.kind == DeviceKind.CPU
    assert quick_cpu_profile.device.torch_version


def test_curves_reproduce_the_measured_gemm_times(quick_cpu_profile: HardwareProfile) -> None:
    """Querying the fitted curve at a measured GEMM's FLOPs gives back about its measured time."""
    hw = quick_cpu_profile
    for prec in (Precision.FP32, Precision.BF16):
        # the peak is the best rate any kernel of the precision reached: a GEMM on most CPUs, the
        # attention kernel where bf16 GEMM has no native path (no AVX512-BF16 / AMX)
        curves = (hw.matmul_efficiency[prec], hw.attention_efficiency[prec])
        assert max(y for c in curves for _, y in c.points) == pytest.approx(1.0)
        assert max(y for _, y in hw.matmul_efficiency[prec].points) <= 1.0 + 1e-9
        samples = [s for s in hw.kernel_samples if s.op == "matmul" and s.dtype == prec.value]
        assert len(samples) >= 3
        for s in samples:
            predicted_us = hw.matmul_s(s.flops, precision=prec) * 1e6
            assert predicted_us == pytest.approx(s.median_us, rel=1e-6) or s.flops in _merged_flops(samples)


def _merged_flops(samples: list) -> set[float]:
    """FLOP counts shared (within 10%) by several shapes: the curve keeps their median."""
    flops = sorted(s.flops for s in samples)
    return {f for f in flops if sum(abs(g / f - 1) <= 0.1 for g in flops) > 1}


def test_memory_bandwidth_is_plausible(quick_cpu_profile: HardwareProfile) -> None:
    hw = quick_cpu_profile
    assert 1.0 < hw.memory_bandwidth_gbs < 2000.0
    assert 0 < hw.memory_bound_efficiency <= 1.0
    assert hw.memory_gib > 0.1


def test_profile_file_round_trips(quick_cpu_profile: HardwareProfile, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    assert write_profile(quick_cpu_profile, path) == quick_cpu_profile
    assert load_profile(path) == quick_cpu_profile
    assert list(tmp_path.iterdir()) == [path]  # the temp file is gone


def test_layer_shapes_cover_a_tiny_dense_block() -> None:
    shapes = pk.layer_gemm_shapes(PRESETS["tiny-dense"], tokens=256, tp=2)
    assert (256, 128, 176) in shapes  # w1 column-split by tp=2
    assert (176, 256, 128) in shapes  # its weight-gradient GEMM
    assert (256, 64, 128) in shapes  # wo row-split (4 heads x 32 / 2)
    moe = pk.layer_gemm_shapes(PRESETS["tiny-moe"], tokens=256, tp=1)
    assert (128, 128, 128) in moe  # one expert's tokens: 256 * top-2 / 4 experts


def test_alpha_beta_fit_recovers_latency_and_bandwidth() -> None:
    rng = np.random.default_rng(0)
    sizes = [1024 * 4**i for i in range(10)]
    true_us = [50.0 + s / 2e3 for s in sizes]  # 50 us + bytes / 2 GB/s
    noisy = [t * rng.uniform(0.9, 1.1) for t in true_us]
    noisy[3] *= 8  # a descheduled sample on a shared machine
    latency_us, bandwidth_gbs = fit_alpha_beta(sizes, noisy)
    assert latency_us == pytest.approx(50.0, rel=0.25)
    assert bandwidth_gbs == pytest.approx(2.0, rel=0.15)


def test_alpha_beta_fit_stays_finite_without_a_size_effect() -> None:
    latency_us, bandwidth_gbs = fit_alpha_beta([1024, 4096, 16384], [300.0, 280.0, 290.0])
    assert 200 < latency_us < 400 and 0 < bandwidth_gbs < 1e3


def test_collective_fits_group_by_collective_tier_and_ranks() -> None:
    links = [LinkResult(collective=c, tier=Tier.INTRA_NODE, num_ranks=n, size_bytes=s, median_us=10 + s / 1e3)
             for c in (Collective.ALL_REDUCE, Collective.SEND_RECV) for n in (2, 4) for s in (1024, 1 << 20, 1 << 24)]
    fits = collective_fits(links)
    assert {(f.collective, f.num_ranks) for f in fits} == {(c, n) for c in (Collective.ALL_REDUCE, Collective.SEND_RECV)
                                                            for n in (2, 4)}
    ar4 = next(f for f in fits if f.collective == Collective.ALL_REDUCE and f.num_ranks == 4)
    # the fit's own query reproduces the samples it came from
    assert ar4.time_s(1 << 24, num_ranks=4) * 1e6 == pytest.approx(10 + (1 << 24) / 1e3, rel=0.01)


def test_tier_groups_split_nodes_and_cross_them() -> None:
    tiers = tier_groups(world_size=8, local_world_size=4)
    by_key = {(t.tier, t.num_ranks): t.groups for t in tiers}
    assert by_key[(Tier.INTRA_NODE, 2)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert by_key[(Tier.INTRA_NODE, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert by_key[(Tier.INTER_NODE, 2)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert [t.tier for t in tier_groups(world_size=2, local_world_size=2)] == [Tier.INTRA_NODE]


def test_build_profile_rejects_nothing_measured() -> None:
    from planner.profiler import RankReport

    with pytest.raises(AssertionError):
        build_profile(RankReport(kernels=[], links=[], world_size=1, threads=1, skipped_kernels=0),
                      ProfileConfig(name="x", device=DeviceKind.CPU, nproc=1))


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "x.txt"], "--out"),
    (["--out", "x.json", "--device", "tpu"], "--device"),
    (["--out", "x.json", "--nproc", "0"], "--nproc"),
    (["--out", "x.json", "--scenario", "missing.toml"], "scenario file not found"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["profile", *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_committed_cpu_profile_is_measured_and_complete() -> None:
    hw = load_profile(REPO / "profiles" / "cpu-2core.json")
    assert hw.source == "measured" and hw.device.kind == DeviceKind.CPU
    assert {Precision.FP32, Precision.BF16} <= set(hw.matmul_efficiency)
    assert {f.collective for f in hw.collectives} == set(Collective)
    sizes = {s.size_bytes for f in hw.collectives for s in f.samples}
    assert min(sizes) <= 1024 and max(sizes) >= 256 * 2**20


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_profile_measures_every_collective(tmp_path: Path) -> None:
    """Two spawned gloo ranks, reduced sweep: kernels + all five collectives, written and reloaded."""
    result = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "two.json"), "--nproc", "2", "--quick"])
    assert result.exit_code == 0, result.output
    hw = load_profile(tmp_path / "two.json")
    assert hw.device.num_devices == 2
    assert {(f.collective, f.tier, f.num_ranks) for f in hw.collectives} == {
        (c, Tier.INTRA_NODE, 2) for c in Collective}
    for fit in hw.collectives:
        assert fit.latency_us >= 0 and fit.bandwidth_gbs > 0 and len(fit.samples) >= 5
    assert json.loads((tmp_path / "two.json").read_text())["source"] == "measured"


def test_queries_outside_the_measured_range_warn(quick_cpu_profile: HardwareProfile) -> None:
    curve = quick_cpu_profile.matmul_efficiency[Precision.FP32]
    lo, hi = curve.points[0][0], curve.points[-1][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quick_cpu_profile.matmul_s((lo * hi) ** 0.5, precision=Precision.FP32)  # inside: silent
    with pytest.warns(ProfileRangeWarning, match="outside the measured range"):
        quick_cpu_profile.matmul_s(hi * 100, precision=Precision.FP32)
