"""HardwareProfile: the on-disk profile schema (profiles/*.json), datasheet defaults and its queries.

A profile says how fast one accelerator computes (peak per precision times an efficiency curve
by operator size), how fast it streams memory, and how fast collectives run on each network
tier (alpha-beta fits). The cluster (ClusterSpec) says which ranks share a tier.
"""

from __future__ import annotations

import bisect
import math
import warnings
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.errors import load_model
from planner.scenario.kinds import GpuFamily
from planner.scenario.spec import MAX_BANDWIDTH_GBS, MAX_MEMORY_GIB, MAX_TFLOPS, LinkTable, Precision

# Finite numbers only: a profile with inf bandwidth or NaN efficiency prices every step at 0 or NaN.
_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
# An efficiency below 1e-6 of peak is no measurement (the slowest measured CPU GEMM here runs at
# 0.9% of peak); it only overflows step times to inf.
MIN_EFFICIENCY = 1e-6
_US = 1e-6
_GB = 1e9
_TFLOP = 1e12


class ProfileSource(StrEnum):
    MEASURED = "measured"
    DATASHEET = "datasheet"


class DeviceKind(StrEnum):
    CUDA = "cuda"
    CPU = "cpu"
    ROCM = "rocm"


class Collective(StrEnum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    SEND_RECV = "send_recv"

    def traffic_factor(self, num_ranks: int) -> float:
        """Bytes each rank moves per byte of buffer in a ring/pairwise algorithm (NCCL busbw rules)."""
        n = num_ranks
        match self:
            case Collective.ALL_REDUCE:
                return 2.0 * (n - 1) / n
            case Collective.ALL_GATHER | Collective.REDUCE_SCATTER | Collective.ALL_TO_ALL:
                return (n - 1) / n
            case Collective.SEND_RECV:
                return 1.0


class Tier(StrEnum):
    INTRA_NODE = "intra_node"  # NVLink / Infinity Fabric domain
    INTER_NODE = "inter_node"  # NIC fabric (InfiniBand / RoCE)


class Curve(BaseModel):
    """y(x) by linear interpolation in log10(x); clamps outside the sampled range."""

    model_config = _FROZEN
    points: list[tuple[float, float]] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _sorted_positive(cls, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        xs = [x for x, _ in pts]
        if any(x <= 0 for x in xs) or xs != sorted(xs) or len(set(xs)) != len(xs):
            raise ValueError("points: x values must be positive, distinct and sorted ascending")
        if any(not MIN_EFFICIENCY <= y <= 1.0 for _, y in pts):
            raise ValueError(f"points: efficiencies must lie in [{MIN_EFFICIENCY:g}, 1]")
        return pts

    def covers(self, x: float) -> bool:
        """False when a query at x would be clamped (outside the measured range)."""
        return self.points[0][0] <= x <= self.points[-1][0]

    def at(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right(pts, (x, math.inf))
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        t = math.log(x / x0) / math.log(x1 / x0)
        return y0 + t * (y1 - y0)


class ProfileRangeWarning(UserWarning):
    """A kernel query fell outside a measured profile's sizes and was clamped to the edge."""


class DeviceInfo(BaseModel):
    model_config = _FROZEN
    name: str
    kind: DeviceKind
    torch_version: str | None = None
    driver_version: str | None = None
    num_devices: int = Field(1, ge=1)
    family: GpuFamily = GpuFamily.GENERIC  # profiles written before this field: read from the name once

    @model_validator(mode="before")
    @classmethod
    def _family_from_name(cls, data: Any) -> Any:
        return GpuFamily.fill(data)


class KernelSample(BaseModel):
    """One raw kernel measurement (the profiler's evidence behind the curves)."""

    model_config = _FROZEN
    op: str
    shape: list[int]
    dtype: str
    flops: float = Field(ge=0)
    bytes: float = Field(ge=0)
    median_us: float = Field(gt=0)
    p10_us: float = Field(gt=0)
    p90_us: float = Field(gt=0)
    repeats: int = Field(ge=1)


class CollectiveSample(BaseModel):
    model_config = _FROZEN
    size_bytes: float = Field(gt=0)
    median_us: float = Field(gt=0)


class CollectiveFit(BaseModel):
    """time = latency + traffic_factor(n) * size / bandwidth (bandwidth is NCCL's "bus" bandwidth)."""

    model_config = _FROZEN
    collective: Collective
    tier: Tier
    num_ranks: int = Field(ge=2)
    latency_us: float = Field(ge=0, le=1e7)
    bandwidth_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    samples: list[CollectiveSample] = []

    def time_s(self, size_bytes: float, *, num_ranks: int) -> float:
        traffic = self.collective.traffic_factor(num_ranks) * size_bytes
        return self.latency_us * _US + traffic / (self.bandwidth_gbs * _GB)


class HostOverhead(BaseModel):
    """Host-side time per operator that kernel microbenchmarks do not see, and how ranks share a device.

    Eager PyTorch pays, per operator, Python + autograd + the ATen dispatcher + allocation; a
    DTensor (tensor-parallel) module call adds sharding propagation and redistribution on top.
    On an async device (CUDA) the host enqueues ahead of the kernels, so a layer takes
    max(kernels, host) (`overlapped`); on a CPU the same core does both, kernels + host. Ops are
    counted as in the traced graph (one per traced forward operator), so measured per-op numbers
    carry whatever untraced work (views, autograd bookkeeping) rides along with each traced op.
    """

    model_config = _FROZEN
    fwd_us_per_op: float = Field(ge=0)
    bwd_us_per_op: float = Field(ge=0)  # autograd backward, per traced forward operator
    # Size-proportional host work per op (output allocation and first touch, autograd's gradient
    # accumulation), per 1,000 tokens of the micro-batch on this rank.
    fwd_us_per_op_per_ktoken: float = Field(0.0, ge=0)
    bwd_us_per_op_per_ktoken: float = Field(0.0, ge=0)
    tp_fwd_us_per_module: float = Field(0.0, ge=0)  # per tensor-parallel (DTensor) module call
    tp_bwd_us_per_module: float = Field(0.0, ge=0)
    # The profiled runtime's TP (PyTorch DTensor ColwiseParallel) all-reduces the input gradient of
    # every column-parallel module on its own, not once per fused block input (Megatron's f operator).
    tp_reduce_per_module: bool = False
    overlapped: bool
    # Processor sharing (cost/sharing.py): cores' worth of progress the ranks on one node make
    # together while all of them compute, in units of one rank running alone (the speed the
    # kernel + host terms above price). None: one process per device (GPUs), nothing shared.
    # Measured on a CPU as ranks x (solo pass time / pass time with every rank at once), so
    # background load on a shared machine counts.
    shared_cores: float | None = Field(None, gt=0)
    # Extra time per blocking collective when peers that compute between collectives time-share
    # cores (a peer descheduled at the call must be rescheduled first; the caller sleeps and waits
    # for a slice to wake up); 0 on GPUs. Fitted to a real tensor-parallel pass with every rank at
    # once (profiler_host), else from a burst + all-reduce probe.
    sync_wait_us: float = Field(0.0, ge=0)
    # Per forward or backward action of a pipeline schedule, per stage and micro-batch, beyond its
    # compute: torch.distributed.pipelining's Python per action, the p2p send/recv, and (ranks
    # sharing cores) the wake-up of a rank blocked on its neighbour's activations, which waits for
    # a time slice. Measured on a CPU (profiler_host, two-stage pipelines of every rank pair at
    # once, compute removed at the shared speed). 0 on GPU datasheet profiles: each rank owns a
    # core and a device, the schedule's Python runs ahead of the asynchronous kernels and NCCL p2p
    # does not deschedule the host, so nothing of it lands on the critical path at these sizes.
    pipe_action_us: float = Field(0.0, ge=0)


class GemmTile(BaseModel):
    """One CTA tile shape the GEMM library picks from, and how close to peak an SM runs it."""

    model_config = _FROZEN
    m: int = Field(gt=0)
    n: int = Field(gt=0)
    efficiency: float = Field(gt=0, le=1, description="per-SM throughput relative to the largest tile")


class GemmRates(BaseModel):
    """GEMM time from shape: tiles over SMs in waves, a K-loop fill, a memory roofline, a fixed cost."""

    model_config = _FROZEN
    sm_count: int = Field(gt=0)
    ceiling: float = Field(gt=0, le=1, description="sustained fraction of the dense peak for large, tile-aligned "
                           "GEMMs (sustained clocks included)")
    fp8_ratio: float = Field(gt=0, le=1, description="FP8 GEMM efficiency relative to the 16-bit one")
    k_fill: float = Field(ge=0, description="K elements worth of pipeline fill and epilogue per tile")
    fixed_us: float = Field(ge=0, description="launch + tail cost per GEMM kernel")
    tiles: list[GemmTile] = Field(min_length=1)


class FlashRates(BaseModel):
    """A fused attention kernel at long sequences, head_dim 128, counting the work it really does
    (the causal mask's skipped half excluded), as a fraction of the dense 16-bit peak."""

    model_config = _FROZEN
    fwd: float = Field(gt=0, le=1)
    bwd: float = Field(gt=0, le=1)
    seq_half: float = Field(gt=0, description="sequence length at which a call reaches half its long-sequence rate")
    small_head_ratio: float = Field(gt=0, le=1, description="rate at head_dim <= 64 relative to head_dim 128")
    persistent: bool = Field(False, description="the kernel runs a persistent grid of one CTA per SM, so a "
                             "communication kernel queued while it runs waits for it to finish")


class HardwareProfile(BaseModel):
    """One accelerator kind and its links, measured or from datasheets; SI units in the queries."""

    model_config = _FROZEN
    name: str
    source: ProfileSource
    citations: list[str] = []
    created: str
    device: DeviceInfo
    peak_tflops: dict[Precision, Annotated[float, Field(gt=0, le=MAX_TFLOPS)]]
    memory_gib: float = Field(gt=0, le=MAX_MEMORY_GIB)
    memory_bandwidth_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    matmul_efficiency: dict[Precision, Curve]
    attention_efficiency: dict[Precision, Curve]
    memory_bound_efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)
    # Measured profiles: efficiency of memory-bound ops vs bytes moved per call (small tensors stay
    # in cache or pay a fixed launch cost); None means the one memory_bound_efficiency for all sizes.
    memory_bound_curve: Curve | None = None
    gemm: GemmRates | None = None  # shape model (cost/kernels.py); None: matmul_efficiency by FLOPs
    flash: dict[str, FlashRates] = {}  # per attention kernel (flash, cudnn); absent: attention_efficiency
    kernel_samples: list[KernelSample] = []
    collectives: list[CollectiveFit] = []
    host: HostOverhead | None = None  # None: kernels only (profiles written before it existed)
    # Bytes every process holds before the model exists (the `runtime` memory term): on a CPU the
    # resident set after `import torch` and process-group init, which the executor's peak RSS
    # includes. 0 on GPUs: the CUDA context and NCCL buffers (~0.5-1 GiB) sit outside the caching
    # allocator's peak the executor reports and are covered by cost.memory.RESERVED_BYTES.
    runtime_bytes: float = Field(0.0, ge=0)
    # `planner profile --links`: every node pair (and rail) of the launch, measured; scenarios point
    # [cluster.network] links at this file to price each group on its own links.
    links: LinkTable | None = None

    @model_validator(mode="after")
    def _bf16_everywhere(self) -> HardwareProfile:
        """bf16 is the fallback curve for every precision a profile does not list (_curve_for)."""
        for name in ("peak_tflops", "matmul_efficiency", "attention_efficiency"):
            if Precision.BF16 not in getattr(self, name):
                raise ValueError(f"{name}: needs a bf16 entry (the fallback for other precisions); "
                                 "re-run `planner profile` or add it")
        return self

    def peak_flops(self, precision: Precision) -> float:
        if precision not in self.peak_tflops:
            known = ", ".join(p.value for p in self.peak_tflops)
            raise ValueError(f"job.precision: {precision.value} has no peak in profile {self.name}; use one of {known}")
        return self.peak_tflops[precision] * _TFLOP

    def matmul_s(self, flops: float, *, precision: Precision) -> float:
        """GEMM time: flops / (peak * efficiency(flops of this one call))."""
        eff = self._efficiency(self.matmul_efficiency, flops, precision=precision, what="matmul")
        return flops / (self.peak_flops(precision) * eff)

    def attention_s(self, flops: float, *, precision: Precision) -> float:
        """Fused (flash-style) attention time; x is the FLOPs of one attention call."""
        eff = self._efficiency(self.attention_efficiency, flops, precision=precision, what="attention")
        return flops / (self.peak_flops(precision) * eff)

    def _efficiency(self, curves: dict[Precision, Curve], flops: float, *, precision: Precision, what: str) -> float:
        """Interpolate between measured sizes; a measured profile warns (ProfileRangeWarning) when
        a query falls outside its range and is clamped, rather than extrapolating silently."""
        curve = _curve_for(curves, precision)
        if self.source == ProfileSource.MEASURED and not curve.covers(flops):
            lo, hi = curve.points[0][0], curve.points[-1][0]
            warnings.warn(f"profile {self.name}: {what} {precision.value} calls outside the measured range "
                          f"[{lo:.3g}, {hi:.3g}] FLOPs use the nearest measured efficiency; re-profile with "
                          "--scenario to cover them", ProfileRangeWarning, stacklevel=3)
        return curve.at(flops)

    def memory_bound_s(self, num_bytes: float) -> float:
        curve = self.memory_bound_curve
        if curve is not None and not curve.covers(num_bytes):
            warnings.warn(f"profile {self.name}: memory-bound calls outside the measured range [{curve.points[0][0]:.3g}, "
                          f"{curve.points[-1][0]:.3g}] bytes use the nearest measured efficiency", ProfileRangeWarning,
                          stacklevel=2)
        eff = self.memory_bound_efficiency if curve is None else curve.at(num_bytes)
        return num_bytes / (self.memory_bandwidth_gbs * _GB * eff)

    def collective_fit(self, collective: Collective, *, tier: Tier, num_ranks: int) -> CollectiveFit:
        """The fit for this collective and tier measured at the nearest rank count (log distance);
        memoised per (frozen) profile: a search asks ~30 times per estimate."""
        return _collective_fit(IdentityKey(self), collective, tier, num_ranks)

    def _find_fit(self, collective: Collective, *, tier: Tier, num_ranks: int) -> CollectiveFit:
        fits = [f for f in self.collectives if f.collective == collective and f.tier == tier]
        if not fits:
            fits = [f for f in self.collectives if f.collective == Collective.ALL_REDUCE and f.tier == tier]
        if not fits:
            raise ValueError(f"profile {self.name}: no {tier.value} collective fits; re-run `planner profile`")
        return min(fits, key=lambda f: abs(math.log(f.num_ranks / max(num_ranks, 2))))

    def collective_s(self, collective: Collective, size_bytes: float, *, num_ranks: int, tier: Tier) -> float:
        """Time of one collective over `size_bytes` of buffer on `num_ranks` ranks inside one tier."""
        if num_ranks <= 1 or size_bytes <= 0:
            return 0.0
        fit = self.collective_fit(collective, tier=tier, num_ranks=num_ranks)
        return self.sync_wait_s + fit.time_s(size_bytes, num_ranks=num_ranks)

    @property
    def sync_wait_s(self) -> float:
        """Extra wait per blocking collective from time-shared cores (HostOverhead.sync_wait_us)."""
        return 0.0 if self.host is None else self.host.sync_wait_us * _US


def _curve_for(curves: dict[Precision, Curve], precision: Precision) -> Curve:
    if precision in curves:
        return curves[precision]
    return curves[Precision.BF16]


def load_profile(path: str | Path) -> HardwareProfile:
    """Read profiles/*.json; ValueError with one line when the file is missing or malformed."""
    return load_model(HardwareProfile, path, what="profile", flag="--profile")


@lru_cache(maxsize=4096)
def _collective_fit(profile: IdentityKey, collective: Collective, tier: Tier, num_ranks: int) -> CollectiveFit:
    return profile.obj._find_fit(collective, tier=tier, num_ranks=num_ranks)


class IdentityKey:
    """Identity-hashed handle so lru_cache can key on unhashable or mutable inputs (graphs,
    hardware profiles); the cache holds the object, so its id is not reused while cached."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.obj is self.obj
