"""Times what kernel microbenchmarks miss: framework cost per operator and how ranks share a CPU.

Runs inside every rank of an initialised process group (the profiler's ranks). Probes:
- passes: the real model (planner.graph.transformer) forward and backward at a short and a long
  sequence, each rank in turn while the others wait (an uncontended core, like the kernel
  medians); the excess over the kernel model, per traced operator, is the host cost
  (profiler_fit turns it into HostOverhead);
- share: the long pass on every rank at once, wall time over whole passes (time slices
  included), in a few rounds (the median resists load that comes and goes on a shared
  machine); ranks x the solo pass time over it is the cores' worth of solo-speed progress the
  node makes (HostOverhead.shared_cores, cost/sharing.py). Two wall times of the same pass,
  so no model enters it (an earlier fit against the model's own pass time inflated it by
  however far the clamped host fit misses the solo pass);
- DTensor: a column-parallel and a row-parallel Linear on a one-rank mesh against plain
  Linears, the cost of one tensor-parallel module call on top of the op;
- TP pass: the long pass tensor-parallel over rank pairs (DTensor, the executor's layout), every
  pair at once; its excess over the model's time for that plan, per collective the model
  charges, is HostOverhead.sync_wait_us (fitted in fit_host): the wait for peers that compute
  between collectives, measured where it happens, inside a training pass;
- pipeline: every rank pair a two-stage torch.distributed.pipelining 1F1B pipeline of small
  Linear stages, every pair at once; wall time per action minus its compute at the shared
  speed is HostOverhead.pipe_action_us (the schedule's Python, p2p calls and wake-ups);
- sync (the fallback where pairs cannot split the model): every rank alternates a short
  compute burst with a small all-reduce in pairs; the wait per collective beyond its
  back-to-back time. Its regular rhythm lets the scheduler line peers up, so it reads low and
  varies from run to run (75-660 us on 2 cores x 4 ranks, against ~2 ms from the TP pass).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from planner.scenario import ModelSpec
from planner.graph import Transformer, loss_fn

SHORT_SEQ = 16  # tokens where kernels are negligible next to dispatch
SHARE_ROUNDS = 3
SYNC_BURST_S = 2e-3  # compute between collectives, about a TP layer's share of work on a CPU rank
SYNC_BYTES = 128 * 1024  # a tiny model's hidden states: latency-bound
_DTENSOR_TOKENS = 16
PIPE_MICRO_BATCHES = 16  # actions per stage = 2 x this; enough that fill and drain are a small part
_PIPE_WIDTH = 256
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class PassTiming:
    seq_len: int
    fwd_s: float  # training forward incl. the loss (autograd recording)
    bwd_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSamples:
    """One rank's host measurements (medians), gathered to rank 0 by the profiler."""

    passes: list[PassTiming]
    together_s: list[float]  # per round: wall seconds per long pass with every rank at once
    dtensor_fwd_s: float  # extra per TP module call, forward
    dtensor_bwd_s: float
    sync_wait_s: float
    collective_s: float  # the same all-reduce back to back
    tp_pass_s: float | None = None  # wall seconds per TP-pair pass, every pair at once (None: not run)
    pipe_action_s: float = 0.0  # wall seconds per pipeline action, every pair a pipeline at once
    pipe_compute_s: float = 0.0  # solo seconds of one action's compute in that probe


def measure_host(spec: ModelSpec, *, seq_len: int, dtype: torch.dtype, repeats: int) -> HostSamples:
    """All probes on this rank; every rank must call it (barriers and collectives inside)."""
    model = _model(spec, dtype=dtype)
    passes = [_in_turn(lambda s=s: _pass(model, spec, seq_len=s, repeats=repeats))
              for s in (SHORT_SEQ, seq_len)]
    together = [_together(model, spec, seq_len=seq_len, repeats=max(2, repeats // 3)) for _ in range(SHARE_ROUNDS)]
    dt_fwd, dt_bwd = _in_turn(lambda: _dtensor_cost(spec.hidden_size, dtype=dtype, repeats=repeats * 4))
    wait_s, coll_s = _sync_wait(repeats=repeats * 10)
    tp_s = _tp_pass(spec, seq_len=seq_len, dtype=dtype, repeats=repeats)
    action_s, action_compute_s = _pipe_action(repeats=max(2, repeats // 3))
    return HostSamples(passes=passes, together_s=together, dtensor_fwd_s=dt_fwd, dtensor_bwd_s=dt_bwd,
                       sync_wait_s=wait_s, collective_s=coll_s, tp_pass_s=tp_s, pipe_action_s=action_s,
                       pipe_compute_s=action_compute_s)


def _model(spec: ModelSpec, *, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(spec)
    model.to_empty(device="cpu")
    model.init_weights(0)
    return model.to(dtype)


def _in_turn(fn: Callable[[], _T]) -> _T:
    """Run fn on each rank in turn (others wait at a barrier); every rank returns its own result."""
    if not dist.is_initialized():
        return fn()
    result = None
    for turn in range(dist.get_world_size()):
        dist.barrier()
        if turn == dist.get_rank():
            result = fn()
    dist.barrier()
    return result


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _batch(spec: ModelSpec, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seq_len)
    return (torch.randint(0, spec.vocab_size, (1, seq_len), generator=gen),
            torch.randint(0, spec.vocab_size, (1, seq_len), generator=gen))


def _pass(model: Transformer, spec: ModelSpec, *, seq_len: int, repeats: int) -> PassTiming:
    x, y = _batch(spec, seq_len)
    fwd, bwd = [], []
    for i in range(repeats + 2):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i >= 2:  # warm-up: allocator caches, oneDNN primitives
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return PassTiming(seq_len=seq_len, fwd_s=statistics.median(fwd), bwd_s=statistics.median(bwd))


def _together(model: Transformer, spec: ModelSpec, *, seq_len: int, repeats: int) -> float:
    """Mean fwd+bwd wall seconds per pass with every rank computing at once."""
    x, y = _batch(spec, seq_len)
    _barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    elapsed = time.perf_counter() - t0
    _barrier()
    return elapsed / repeats


def _dtensor_cost(hidden: int, *, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(forward, backward) seconds per TP module call: a column + row parallel pair over a
    one-rank mesh minus the same plain Linears, halved; 0 in a single process (no TP there)."""
    if not dist.is_initialized():
        return 0.0, 0.0
    group = _own_group()
    mesh = DeviceMesh.from_group(group, "cpu")
    plain = nn.Sequential(nn.Linear(hidden, 2 * hidden, bias=False), nn.Linear(2 * hidden, hidden, bias=False))
    plain = plain.to(dtype)
    sharded = parallelize_module(nn.Sequential(*(nn.Linear(m.in_features, m.out_features, bias=False)
                                                 for m in plain)).to(dtype),
                                 mesh, {"0": ColwiseParallel(), "1": RowwiseParallel()})
    x = torch.randn(1, _DTENSOR_TOKENS, hidden, dtype=dtype, requires_grad=True)
    pf, pb = _module_times(plain, x, repeats=repeats)
    sf, sb = _module_times(sharded, x, repeats=repeats)
    return max(0.0, (sf - pf) / 2), max(0.0, (sb - pb) / 2)


_GROUPS: dict[int, dist.ProcessGroup] = {}


def _own_group() -> dist.ProcessGroup:
    """A one-rank group per rank (new_group is collective: every rank creates all of them once)."""
    if not _GROUPS:
        for r in range(dist.get_world_size()):
            _GROUPS[r] = dist.new_group([r])
    return _GROUPS[dist.get_rank()]


def _module_times(module: nn.Module, x: torch.Tensor, *, repeats: int) -> tuple[float, float]:
    fwd, bwd = [], []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        out = module(x).sum()
        t1 = time.perf_counter()
        out.backward()
        t2 = time.perf_counter()
        if i >= 3:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def _sync_wait(*, repeats: int) -> tuple[float, float]:
    """(extra wait per collective when peers compute between calls, back-to-back collective time).

    All ranks at once, in pairs (TP-like groups of two; the whole world when it has fewer than 4
    ranks): a burst alone, the all-reduce alone, then burst + all-reduce; wait = the excess.
    """
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return 0.0, 0.0
    world, rank = dist.get_world_size(), dist.get_rank()
    pairs = [list(range(r, min(r + 2, world))) for r in range(0, world, 2)]
    groups = [dist.new_group(p) for p in pairs]
    group = groups[rank // 2]
    if len(pairs[rank // 2]) < 2:
        group = dist.group.WORLD
    buf = torch.zeros(SYNC_BYTES // 4)
    burst = _in_turn(lambda: _burst(SYNC_BURST_S))

    def collective() -> None:
        dist.all_reduce(buf, group=group)

    def both() -> None:
        burst()
        collective()

    alone_s = _mean_together(burst, repeats=repeats)
    coll_s = _mean_together(collective, repeats=repeats)
    both_s = _mean_together(both, repeats=repeats)
    return max(0.0, both_s - alone_s - coll_s), coll_s


def _tp_ready(spec: ModelSpec, world: int) -> bool:
    """Pairs of ranks can run the model tensor-parallel (even world, heads split in two, no MLA)."""
    return (world >= 2 and world % 2 == 0 and not spec.uses_mla and spec.num_attention_heads % 2 == 0
            and spec.kv_heads % 2 == 0 and spec.vocab_size % 2 == 0 and not spec.tie_word_embeddings)


def _tp_pass(spec: ModelSpec, *, seq_len: int, dtype: torch.dtype, repeats: int) -> float | None:
    """Mean fwd+bwd wall seconds per pass of the model split over rank pairs (Megatron layout:
    q/k/v and gate/up column-parallel, output projections row-parallel, vocab-parallel embedding
    and head, MoE experts replicated), every pair at once; None where pairs cannot split it."""
    if not dist.is_initialized() or not _tp_ready(spec, dist.get_world_size()):
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    groups = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]
    mesh = DeviceMesh.from_group(groups[rank // 2], "cpu")
    model = _model(spec, dtype=dtype)
    parallelize_module(model, mesh, {"tok_embeddings": RowwiseParallel(input_layouts=Replicate()),
                                     "output": ColwiseParallel(output_layouts=Replicate())})
    for block in model.layers.values():
        plan = {f"attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")} | {"attention.wo": RowwiseParallel()}
        if getattr(block, "feed_forward", None) is not None:
            plan |= {f"feed_forward.{w}": ColwiseParallel() for w in ("w1", "w3") if hasattr(block.feed_forward, w)}
            plan["feed_forward.w2"] = RowwiseParallel()
        parallelize_module(block, mesh, plan)
    _together(model, spec, seq_len=seq_len, repeats=2)  # warm-up: DTensor sharding-propagation caches
    # Many passes: the pairs drift out of step over a run and the waits grow to the executor's
    # steady state (3 passes read 124 ms, 9 read 150-185 ms per pass on 2 cores x 4 ranks).
    return _together(model, spec, seq_len=seq_len, repeats=repeats)


def _pipe_action(*, repeats: int) -> tuple[float, float]:
    """(wall seconds per action of a torch.distributed.pipelining 1F1B schedule, every rank pair a
    two-stage pipeline and every pair at once; solo seconds of one action's compute).

    The stages compute about as much per action as a tiny model's pipeline stage (two 256-wide
    Linears on 256 rows, ~1-3 ms), so peers keep the cores busy and a rank blocked on its
    neighbour's p2p waits for a time slice to wake up, as in the executor; fit_host removes the
    compute (at the shared speed) and keeps the schedule's Python, send/recv and wake-up cost.
    (0, 0) where pairs cannot be formed.
    """
    if not dist.is_initialized() or dist.get_world_size() < 2 or dist.get_world_size() % 2:
        return 0.0, 0.0
    world, rank = dist.get_world_size(), dist.get_rank()
    groups = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]
    torch.manual_seed(rank)
    module = nn.Sequential(nn.Linear(_PIPE_WIDTH, _PIPE_WIDTH), nn.Linear(_PIPE_WIDTH, _PIPE_WIDTH))
    x = torch.randn(PIPE_MICRO_BATCHES * _PIPE_WIDTH, _PIPE_WIDTH)
    solo_s = _in_turn(lambda: sum(_module_times(module, x[:_PIPE_WIDTH], repeats=repeats * 3)) / 2)
    stage = PipelineStage(module, rank % 2, 2, torch.device("cpu"), group=groups[rank // 2])
    schedule = Schedule1F1B(stage, PIPE_MICRO_BATCHES, loss_fn=lambda out, target: out.sum())

    def step() -> None:
        if rank % 2 == 0:
            schedule.step(x)
        else:
            schedule.step(target=x)

    return _mean_together(step, repeats=repeats) / (2 * PIPE_MICRO_BATCHES), solo_s


def _burst(seconds: float) -> Callable[[], None]:
    """A compute burst of about `seconds` on an uncontended core (small GEMMs, like a tiny layer)."""
    a, b = torch.randn(256, 128), torch.randn(128, 352)

    def gemm() -> None:
        torch.mm(a, b)

    t0 = time.perf_counter()
    for _ in range(50):
        gemm()
    n = max(1, round(seconds / ((time.perf_counter() - t0) / 50)))

    def run() -> None:
        for _ in range(n):
            gemm()

    return run


def _mean_together(fn: Callable[[], None], *, repeats: int) -> float:
    fn()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    elapsed = time.perf_counter() - t0
    dist.barrier()
    return elapsed / repeats
