"""Pipeline stages from plan.stage_blocks and torch.distributed.pipelining schedules."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.pipelining.schedules import _PipelineSchedule

from executor.tied import add_output_copy
from planner.plan import Plan, Schedule
from planner.graph import Transformer, loss_fn


def chunk_ids(plan: Plan, *, pp_rank: int) -> list[int]:
    """Model chunks (virtual stages) held by pp_rank: looped placement p, p+pp, p+2pp, ..."""
    return [pp_rank + v * plan.dims.pp for v in range(plan.virtual_stages)]


def split_chunk(model: Transformer, plan: Plan, *, chunk: int) -> Transformer:
    """A copy of the (meta) model keeping chunk's blocks; embeddings on chunk 0, head on the last.

    FQNs stay those of the whole model (layers is a ModuleDict), so checkpoints are plan-free.
    """
    blocks = plan.stage_blocks(model.spec.num_hidden_layers)
    start = sum(blocks[:chunk])
    keep = {str(i) for i in range(start, start + blocks[chunk])}
    part = copy.deepcopy(model)
    for key in [k for k in part.layers if k not in keep]:
        del part.layers[key]
    if chunk > 0:
        part.tok_embeddings = None
        if part.pos_embeddings is not None:
            # a parameter-free stand-in: Transformer.rope() only asks whether positions are learned
            part.pos_embeddings = nn.Identity()
    if chunk < plan.num_chunks - 1:
        part.norm, part.output = None, None
    elif chunk > 0 and model.spec.tie_word_embeddings:
        add_output_copy(part)
    return part


def build_schedule(stages: list[nn.Module], plan: Plan, *, chunks: list[int], group, device: torch.device,
                   num_micro_batches: int) -> _PipelineSchedule:
    pipe_stages = [PipelineStage(m, c, plan.num_chunks, device, group=group) for m, c in zip(stages, chunks)]
    match plan.schedule:
        case Schedule.GPIPE:
            return ScheduleGPipe(pipe_stages[0], num_micro_batches, loss_fn=loss_fn)
        case Schedule.ONE_F_ONE_B:
            return Schedule1F1B(pipe_stages[0], num_micro_batches, loss_fn=loss_fn)
        case Schedule.INTERLEAVED_1F1B:
            return ScheduleInterleaved1F1B(pipe_stages, num_micro_batches, loss_fn=loss_fn)
        case Schedule.ZERO_BUBBLE:
            raise ValueError("schedule: zero-bubble is not run by the executor; use gpipe, 1f1b or interleaved-1f1b")


def run_pipeline_step(schedule: _PipelineSchedule, plan: Plan, *, chunks: list[int], inputs: torch.Tensor,
                      labels: torch.Tensor) -> float | None:
    """One forward+backward over all micro-batches; the mean micro-batch loss on the last stage."""
    first, last = 0 in chunks, plan.num_chunks - 1 in chunks
    losses: list[torch.Tensor] = []
    args = (inputs,) if first else ()
    kwargs = {"target": labels, "losses": losses} if last else {}
    schedule.step(*args, **kwargs)
    return float(torch.stack([l.detach() for l in losses]).mean()) if last else None
