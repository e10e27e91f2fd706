"""The training loop: build the plan's model on this rank, run K steps, measure, write Measurement."""

from __future__ import annotations

import os
import resource
import signal
import statistics
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict
from torch import nn

from executor import checkpoint
from executor.data import global_batch, local_batch
from executor.documents import (DocumentState, PackedRows, apply_documents, check_documents,
                                measured_loads, packed_batch, rank_rows)
from executor.data_parallel import PlanOptimizer, replica_groups, sync_gradients
from executor.mesh import Meshes, build_meshes
from executor.parallelize import check_supported, materialise, parallelize
from executor.pipeline import build_schedule, chunk_ids, run_pipeline_step, split_chunk
from executor.vocab_parallel import VocabPipeline, vocab_parallel_rank
from executor.routing import routing_trace
from executor.tied import broadcast_tied, sum_tied_gradients, tied_group, tied_params
from planner.plan import Axis, OffloadState, Plan, ZeroStage, check
from planner.scenario import GIB, Scenario
from planner.graph import Transformer, loss_fn



class Measurement(BaseModel):
    """measurement.json; names shared with planner.cost.Estimate mean the same thing."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scenario: str
    model: str
    plan: dict
    world_size: int
    backend: str
    device: str
    steps: int
    step_time_s: float
    step_times_s: list[float]
    tokens_per_s_per_gpu: float
    peak_memory_gib: float
    memory_gib: list[float]
    losses: list[float]
    restarts: int = 0
    resumed_from_step: int | None = None
    routing: dict | None = None
    dp_loads: list[list[list[int]]] | None = None  # per step, per dp rank: [tokens, attention pairs] attended
    offload: dict[str, float] | None = None  # optimizer offload, summed over ranks: host pool and bytes moved
    params: list[int] | None = None  # parameters (local shards) each rank holds


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    steps: int
    seed: int = 0
    checkpoint_every: int = 0
    checkpoint_dir: Path | None = None
    resume_from: Path | None = None
    data_path: Path | None = None
    kill_at_step: int | None = None  # fault injection: the last rank SIGKILLs itself once


@dataclass(slots=True, kw_only=True)
class Rank:
    """What this rank runs: its model chunk(s), pipeline schedule (pp > 1), optimizer."""

    modules: list[nn.Module]
    chunks: list[int]
    schedule: object | None
    optimizer: PlanOptimizer
    sync: list | None  # replica groups to all-reduce (ZeRO 0/1); None when FSDP reduces
    tied: dist.ProcessGroup | None = None  # first+last stage pair holding a tied embedding (pp > 1)
    documents: DocumentState | None = None  # packed variable-length rows ([job.sequences])
    vocab: VocabPipeline | None = None  # vocabulary-parallel pipeline (plan.vocab_parallel)


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build_rank(plan: Plan, scenario: Scenario, *, meshes: Meshes, device: torch.device, seed: int) -> Rank:
    spec, job = scenario.model, scenario.job
    with torch.device("meta"):
        whole = Transformer(spec)
    chunks = chunk_ids(plan, pp_rank=meshes.local_rank(Axis.PP))
    modules = [split_chunk(whole, plan, chunk=c) if plan.dims.pp > 1 else whole for c in chunks]
    tied = tied_group(plan) if spec.tie_word_embeddings and plan.dims.pp > 1 else None
    for m in modules:
        materialise(m, device=device, seed=seed)
    if tied is not None:
        broadcast_tied(tied_params(modules), group=tied)
    for m in modules:
        parallelize(m, plan, meshes=meshes, seq_len=job.seq_len)
    vocab = None
    if plan.vocab_parallel:
        modules, vocab = vocab_parallel_rank(whole, plan, pp_rank=meshes.local_rank(Axis.PP), group=meshes.group(Axis.PP),
                                             device=device, seed=seed, stage=modules[0])
    documents = DocumentState() if job.sequences is not None else None
    if documents is not None:
        apply_documents(modules[0], documents)
    fsdp = plan.zero_stage >= ZeroStage.GRADIENTS and meshes.dp_cp.size() > 1
    groups = replica_groups(modules, meshes=meshes)
    optimizer = PlanOptimizer(groups, job=job, shard=plan.zero_stage == ZeroStage.OPTIMIZER,
                              offload=OffloadState.OPTIMIZER in plan.offload)
    schedule = None
    if plan.dims.pp > 1 and vocab is None:
        schedule = build_schedule(modules, plan, chunks=chunks, group=meshes.group(Axis.PP), device=device,
                                  num_micro_batches=plan.num_micro_batches(job.global_batch))
    return Rank(modules=modules, chunks=chunks, schedule=schedule, optimizer=optimizer,
                sync=None if fsdp else groups, tied=tied, documents=documents, vocab=vocab)


def forward_backward(rank: Rank, plan: Plan, *, inputs: torch.Tensor, labels: torch.Tensor,
                     num_micro_batches: int, packed: PackedRows | None = None) -> float | None:
    """Gradients of the mean micro-batch loss; returns that loss where this rank computes it."""
    if rank.vocab is not None:
        return rank.vocab.step(inputs, labels, num_micro_batches=num_micro_batches)
    if rank.schedule is not None:
        return run_pipeline_step(rank.schedule, plan, chunks=rank.chunks, inputs=inputs, labels=labels)
    model, total = rank.modules[0], 0.0
    for k, (x, y) in enumerate(zip(inputs.chunk(num_micro_batches), labels.chunk(num_micro_batches))):
        if packed is not None:  # this micro-batch's document ids and positions for the attention cores
            rows = x.shape[0]
            rank.documents.doc_ids = packed.doc_ids[k * rows:(k + 1) * rows].to(x.device)
            rank.documents.positions = packed.positions[k * rows:(k + 1) * rows]
        loss = loss_fn(model(x), y) / num_micro_batches
        loss.backward()
        total += loss.item()
    return total


def global_loss(local: float | None, *, device: torch.device) -> float:
    """Mean over the ranks that hold a loss (last pipeline stage; dp*cp shards, tp copies equal)."""
    t = torch.tensor([0.0 if local is None else local, 0.0 if local is None else 1.0],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def train_step(rank: Rank, plan: Plan, scenario: Scenario, *, step: int, options: RunOptions,
               meshes: Meshes, device: torch.device) -> float:
    job = scenario.job
    packed = None
    if job.sequences is not None:
        packed = rank_rows(packed_batch(step, job=job, vocab=scenario.model.vocab_size, seed=options.seed), job=job,
                           dp=plan.dims.dp, dp_rank=meshes.local_rank(Axis.DP), balance=plan.balance)
        inputs, labels = packed.inputs, packed.labels
    else:
        inputs, labels = local_batch(global_batch(step, job=job, vocab=scenario.model.vocab_size, seed=options.seed,
                                                  data_path=options.data_path), plan=plan, meshes=meshes)
    local = forward_backward(rank, plan, inputs=inputs.to(device), labels=labels.to(device),
                             num_micro_batches=plan.num_micro_batches(job.global_batch), packed=packed)
    if rank.documents is not None:
        rank.documents.close_step()
    if rank.tied is not None:
        sum_tied_gradients(tied_params(rank.modules), group=rank.tied)
    if rank.sync is not None:
        sync_gradients(rank.sync)
    rank.optimizer.step()
    rank.optimizer.zero_grad()
    return global_loss(local, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> float:
    """CUDA caching-allocator peak on GPU; peak resident set size (ru_maxrss, KiB on Linux) on CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def train(plan: Plan, scenario: Scenario, *, options: RunOptions) -> Measurement:
    """Run on the current process group (every rank calls this); every rank returns the Measurement."""
    spec = scenario.model
    check(plan, dataclasses.replace(scenario.plan_target(), world_size=dist.get_world_size()))
    check_supported(plan, spec)
    check_documents(plan, scenario.job)
    device = device_for_rank()
    meshes = build_meshes(plan, device_type=device.type, moe=spec.is_moe)
    rank = build_rank(plan, scenario, meshes=meshes, device=device, seed=options.seed)
    start, losses = _resume(rank, options)
    _record_routing(rank)
    times: list[float] = []
    for step in range(start, options.steps):
        _sync(device)
        t0 = time.perf_counter()
        losses.append(train_step(rank, plan, scenario, step=step, options=options, meshes=meshes, device=device))
        _sync(device)
        times.append(time.perf_counter() - t0)
        _maybe_checkpoint(rank, options, step=step + 1, losses=losses)
        _maybe_die(options, step=step + 1)
    return _measure(plan, scenario, rank=rank, meshes=meshes, device=device, losses=losses, times=times,
                    resumed=start if start else None)


def _record_routing(rank: Rank) -> None:
    """Expert loads and last routes feed the routing trace (see executor.routing)."""
    for module in rank.modules:
        for sub in module.modules():
            if hasattr(sub, "record_routing"):
                sub.record_routing = True


def _resume(rank: Rank, options: RunOptions) -> tuple[int, list[float]]:
    """Own checkpoints first (a torchrun restart), else --resume-from (possibly another plan's run)."""
    sources = [p for p in (options.checkpoint_dir, options.resume_from) if p is not None and p.exists()]
    path = next((found for found in map(checkpoint.latest, sources) if found is not None), None)
    if path is None:
        return 0, []
    if rank.optimizer.inner is not None:
        checkpoint.init_optimizer_state(rank.optimizer.inner)
    progress = checkpoint.load(path, state=checkpoint.state_dict(rank.modules, rank.optimizer.inner))
    return int(progress["step"]), list(progress["losses"])


def _maybe_checkpoint(rank: Rank, options: RunOptions, *, step: int, losses: list[float]) -> None:
    if not options.checkpoint_every or step % options.checkpoint_every or options.checkpoint_dir is None:
        return
    state = checkpoint.state_dict(rank.modules, rank.optimizer.inner)
    checkpoint.save(options.checkpoint_dir, step=step, state=state, progress={"step": step, "losses": losses})


def _maybe_die(options: RunOptions, *, step: int) -> None:
    """Fault injection for the restart test: only in torchrun's first attempt, only the last rank."""
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if options.kill_at_step == step and first_attempt and dist.get_rank() == dist.get_world_size() - 1:
        os.kill(os.getpid(), signal.SIGKILL)


def _gather_floats(values: list[float], *, device: torch.device, op: dist.ReduceOp) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def _offload_totals(rank: Rank, plan: Plan, *, device: torch.device) -> dict[str, float] | None:
    """Host pool bytes and transfers of an offloaded optimizer, summed over the ranks (collective)."""
    if OffloadState.OPTIMIZER not in plan.offload:
        return None
    host = rank.optimizer.host
    mine = [0.0] * 4 if host is None else [host.state_bytes(), host.d2h_bytes, host.h2d_bytes,
                                           sum(_local_numel(p) for p in host.params)]
    moved = _gather_floats(mine, device=device, op=dist.ReduceOp.SUM)
    return dict(zip(("host_state_bytes", "d2h_bytes", "h2d_bytes", "params"), moved, strict=True))


def _local_numel(p: torch.Tensor) -> int:
    return (p.to_local() if hasattr(p, "to_local") else p).numel()


def _measure(plan: Plan, scenario: Scenario, *, rank: Rank, meshes: Meshes, device: torch.device,
             losses: list[float], times: list[float], resumed: int | None) -> Measurement:
    world = dist.get_world_size()
    times = _gather_floats(times, device=device, op=dist.ReduceOp.MAX)  # a step ends with its slowest rank
    memory = [0.0] * world
    memory[dist.get_rank()] = peak_memory_bytes(device) / GIB
    memory = _gather_floats(memory, device=device, op=dist.ReduceOp.SUM)
    params = [0.0] * world
    params[dist.get_rank()] = float(sum(_local_numel(p) for m in rank.modules for p in m.parameters()))
    params = _gather_floats(params, device=device, op=dist.ReduceOp.SUM)
    timed = times[1:] if len(times) > 1 else times  # the first step pays for warm-up
    step_s = statistics.median(timed) if timed else 0.0
    tokens = scenario.job.tokens_per_step
    return Measurement(
        scenario=scenario.name, model=scenario.model.name, plan=plan.model_dump(mode="json"), world_size=world,
        backend=dist.get_backend(), device=device.type, steps=len(losses), step_time_s=step_s,
        step_times_s=times, tokens_per_s_per_gpu=tokens / step_s / world if step_s else 0.0,
        peak_memory_gib=max(memory), memory_gib=memory, losses=losses, params=[int(n) for n in params],
        restarts=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)), resumed_from_step=resumed,
        routing=routing_trace(rank.modules, meshes=meshes, spec=scenario.model),
        offload=_offload_totals(rank, plan, device=device),
        dp_loads=None if rank.documents is None else measured_loads(rank.documents, dp_rank=meshes.local_rank(Axis.DP),
                                                                    dp=plan.dims.dp),
    )
