"""A plan as a framework takes it: a torchtitan job-config TOML fragment or Megatron-LM arguments.

Every field maps to the option name the framework documents, in the version cited here:
- torchtitan v0.2.2 (pytorch/torchtitan tag v0.2.2, commit 73a0e69, 2026-02-20; the last release
  with TOML job configs): torchtitan/config/job_config.py, sections [parallelism], [training],
  [activation_checkpoint], [model] (converters) and [quantize.linear.*];
- Megatron-LM core_v0.15.0 (NVIDIA/Megatron-LM tag core_v0.15.0, commit 0d7e02b, 2025-12-05):
  megatron/training/arguments.py, the `group.add_argument('--...')` flags.
What a framework cannot express is returned in `unsupported`, one line each, never dropped; `written`
says, per plan field, the options it became (issue 16's fields: export_knobs.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import StrEnum

from planner.plan import DEFAULT_EXPERT_RANK_ORDER, DEFAULT_RANK_ORDER, Plan, Recompute, Schedule, ZeroStage
from planner.report.export_knobs import Draft, megatron_knobs, titan_knobs
from planner.scenario import Precision, Scenario

TORCHTITAN_VERSION = "torchtitan v0.2.2 (pytorch/torchtitan 73a0e69, torchtitan/config/job_config.py)"
MEGATRON_VERSION = "Megatron-LM core_v0.15.0 (NVIDIA/Megatron-LM 0d7e02b, megatron/training/arguments.py)"

# torchtitan's names for torch.distributed.pipelining schedules (job_config.py points at
# torch/distributed/pipelining/schedules.py get_schedule_class)
_TITAN_SCHEDULE = {Schedule.GPIPE: "GPipe", Schedule.ONE_F_ONE_B: "1F1B",
                   Schedule.INTERLEAVED_1F1B: "Interleaved1F1B"}
# torchtitan's dtype names (Training.mixed_precision_param: Literal["bfloat16", "float32"])
_TITAN_DTYPE = {Precision.BF16: "bfloat16", Precision.FP32: "float32"}
# Megatron's data-parallel sharding (--data-parallel-sharding-strategy, with --use-megatron-fsdp)
_MEGATRON_SHARDING = {ZeroStage.GRADIENTS: "optim_grads", ZeroStage.PARAMETERS: "optim_grads_params"}


class ExportFormat(StrEnum):
    TORCHTITAN = "torchtitan"
    MEGATRON = "megatron"


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameworkConfig:
    """Options by the framework's own names, what it cannot express, and the rendered text."""

    format: ExportFormat
    version: str
    options: dict[str, dict[str, object]] | dict[str, object]  # torchtitan: section -> {key: value}
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: dict[str, list[str]] = field(default_factory=dict)  # plan field -> options it became
    text: str = ""


def export_plan(plan: Plan, scenario: Scenario, fmt: ExportFormat) -> FrameworkConfig:
    match fmt:
        case ExportFormat.TORCHTITAN:
            return _torchtitan(plan, scenario)
        case ExportFormat.MEGATRON:
            return _megatron(plan, scenario)


def _common(plan: Plan, framework: str) -> Draft:
    """The fields neither framework's options can carry: placement, mesh orders, traces."""
    draft = Draft()
    out = draft.unsupported
    if plan.expert_placement is not None:
        out.append(f"expert_placement: {framework} places experts in contiguous blocks per EP rank; the plan's "
                   "per-layer placement (from the placement ILP) is not expressible")
    if plan.rank_order != list(DEFAULT_RANK_ORDER):
        out.append(f"rank_order {[a.value for a in plan.rank_order]}: {framework}'s mesh order is fixed "
                   "(tp innermost, then cp, dp, pp)")
    if plan.expert_rank_order != list(DEFAULT_EXPERT_RANK_ORDER):
        out.append(f"expert_rank_order {[a.value for a in plan.expert_rank_order]}: {framework}'s expert mesh "
                   "order is fixed")
    if plan.dims.pp == 1 and plan.schedule != Schedule.ONE_F_ONE_B:
        out.append(f"schedule {plan.schedule.value}: pp = 1, no pipeline to schedule")
    if plan.expert_load is not None:
        out.append("expert_load: the routing trace the plan was priced with is data, not a framework option")
    if plan.device_mapping is not None:
        out.append("device_mapping: which GPU runs which rank is the launcher's (torchrun node rank, "
                   "CUDA_VISIBLE_DEVICES), not a framework option")
    return draft


def _torchtitan(plan: Plan, sc: Scenario) -> FrameworkConfig:
    d, job = plan.dims, sc.job
    draft = _common(plan, "torchtitan")
    unsupported = draft.unsupported
    par: dict[str, object] = {"tensor_parallel_degree": d.tp, "pipeline_parallel_degree": d.pp,
                              "context_parallel_degree": d.cp}
    par |= _titan_data_parallel(plan, draft)
    if d.tp > 1 and not plan.sequence_parallel:
        unsupported.append("sequence_parallel = false: torchtitan's tensor parallelism always shards norms "
                           "and dropout along the sequence")
    elif plan.sequence_parallel:
        draft.wrote("sequence_parallel", "parallelism.tensor_parallel_degree")
    if sc.model.is_moe:
        par |= {"expert_parallel_degree": d.ep, "expert_tensor_parallel_degree": d.etp}
        if d.etp not in (1, d.tp):
            unsupported.append(f"etp={d.etp}: torchtitan v0.2.2 supports expert_tensor_parallel_degree 1 or "
                               f"equal to tensor_parallel_degree ({d.tp})")
    draft.wrote("dims", *(f"parallelism.{k}" for k in par if k.endswith("_degree")))
    per_replica = job.global_batch // d.dp
    if d.pp > 1:
        par |= _titan_pipeline(plan, sc, draft)
        training = {"local_batch_size": per_replica, "global_batch_size": job.global_batch}
    else:  # gradient accumulation: global_batch_size > local_batch_size * dp
        training = {"local_batch_size": plan.micro_batch_size, "global_batch_size": job.global_batch}
        draft.wrote("micro_batch_size", "training.local_batch_size")
    training["seq_len"] = job.seq_len
    if job.precision in _TITAN_DTYPE:
        training["mixed_precision_param"] = _TITAN_DTYPE[job.precision]
    elif job.precision != Precision.FP8:  # fp8: bfloat16 plus the float8 / mx converters (export_knobs.py)
        unsupported.append(f"precision {job.precision.value}: torchtitan's mixed_precision_param takes bfloat16 "
                           "or float32")
    ac: dict[str, object] = {"mode": plan.recompute.value}
    draft.wrote("recompute", "activation_checkpoint.mode")
    if plan.recompute == Recompute.SELECTIVE:
        ac["selective_ac_option"] = "op"
        draft.notes.append("recompute selective -> torchtitan's op-level selective AC (selective_ac_option = "
                           "\"op\"), which saves matmul outputs; the planner priced Megatron's attention-core recompute")
    options = {"parallelism": par, "training": training, "activation_checkpoint": ac}
    titan_knobs(plan, sc, options, draft)
    return _config(ExportFormat.TORCHTITAN, TORCHTITAN_VERSION, plan, options, draft)


def _titan_data_parallel(plan: Plan, draft: Draft) -> dict[str, object]:
    dp = plan.dims.dp
    match plan.zero_stage:
        case ZeroStage.PARAMETERS | ZeroStage.GRADIENTS:  # FSDP2; ZeRO-2 keeps parameters after forward
            draft.wrote("zero_stage", "parallelism.data_parallel_shard_degree", "parallelism.fsdp_reshard_after_forward")
            return {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": dp,
                    "fsdp_reshard_after_forward": "always" if plan.zero_stage == ZeroStage.PARAMETERS else "never"}
        case ZeroStage.OPTIMIZER:
            draft.unsupported.append("zero_stage 1: torchtitan shards with FSDP2 (parameters, gradients and "
                                     "optimizer state together) or replicates (DDP); written as DDP")
        case ZeroStage.NONE:
            pass
    return {"data_parallel_replicate_degree": dp, "data_parallel_shard_degree": 1}


def _config(fmt: ExportFormat, version: str, plan: Plan, options: dict, draft: Draft) -> FrameworkConfig:
    header = [version, plan.describe()]
    render = _toml if fmt == ExportFormat.TORCHTITAN else _args_text
    return FrameworkConfig(format=fmt, version=version, options=options, unsupported=draft.unsupported,
                           notes=draft.notes, written=draft.written,
                           text=render(options, header=header, unsupported=draft.unsupported, notes=draft.notes))


def _titan_pipeline(plan: Plan, sc: Scenario, draft: Draft) -> dict[str, object]:
    out: dict[str, object] = {"pipeline_parallel_microbatch_size": plan.micro_batch_size}
    match plan.schedule:
        case Schedule.ZERO_BUBBLE:
            out["pipeline_parallel_schedule"] = "1F1B"
            draft.unsupported.append("schedule zero-bubble with one stage per rank: torchtitan's zero-bubble "
                                     "schedules (InterleavedZeroBubble, ZBVZeroBubble) need several stages per "
                                     "rank; written as 1F1B")
        case _:
            out["pipeline_parallel_schedule"] = _TITAN_SCHEDULE[plan.schedule]
            draft.wrote("schedule", "parallelism.pipeline_parallel_schedule")
    layers = sc.model.num_hidden_layers
    if plan.blocks_per_stage is not None:
        out["module_fqns_per_model_part"] = _titan_parts(plan.blocks_per_stage)
    elif layers % plan.num_chunks == 0:
        out |= {"pipeline_parallel_layers_per_stage": layers // plan.num_chunks,
                "pipeline_parallel_first_stage_less_layers": 0, "pipeline_parallel_last_stage_less_layers": 0}
    else:
        out["module_fqns_per_model_part"] = _titan_parts(plan.stage_blocks(layers))
    # the chunk count (pp * virtual stages) follows from the layers or FQNs per model part
    chunks = "module_fqns_per_model_part" if "module_fqns_per_model_part" in out else "pipeline_parallel_layers_per_stage"
    draft.wrote("micro_batch_size", "parallelism.pipeline_parallel_microbatch_size")
    draft.wrote("virtual_stages", f"parallelism.{chunks}")
    draft.wrote("blocks_per_stage", f"parallelism.{chunks}")
    return out


def _titan_parts(blocks: list[int]) -> list[list[str]]:
    """torchtitan's module FQNs per model chunk (its Llama/DeepSeek names: tok_embeddings,
    layers.N, norm, output); the embedding on the first chunk, norm and head on the last."""
    parts, start = [], 0
    for k, n in enumerate(blocks):
        part = (["tok_embeddings"] if k == 0 else []) + [f"layers.{i}" for i in range(start, start + n)]
        parts.append(part + (["norm", "output"] if k == len(blocks) - 1 else []))
        start += n
    return parts


def _megatron(plan: Plan, sc: Scenario) -> FrameworkConfig:
    d, job = plan.dims, sc.job
    draft = _common(plan, "Megatron-LM")
    draft.notes.append(f"data-parallel size {d.dp} is implied: world size / (tensor * pipeline * context) "
                       f"= {d.world_size} / {d.tp * d.pp * d.cp}")
    args = _megatron_parallel(plan, sc, draft)
    match plan.recompute:
        case Recompute.FULL:
            args |= {"--recompute-granularity": "full", "--recompute-method": "uniform", "--recompute-num-layers": 1}
        case Recompute.SELECTIVE:  # Megatron's default selective set is core_attn: what the planner prices
            args["--recompute-granularity"] = "selective"
        case Recompute.NONE:
            pass
    draft.wrote("recompute", *(k for k in args if k.startswith("--recompute")))
    match plan.zero_stage:
        case ZeroStage.OPTIMIZER:
            args["--use-distributed-optimizer"] = True
        case ZeroStage.GRADIENTS | ZeroStage.PARAMETERS:
            args |= {"--use-megatron-fsdp": True, "--data-parallel-sharding-strategy": _MEGATRON_SHARDING[plan.zero_stage]}
        case ZeroStage.NONE:
            pass
    draft.wrote("zero_stage", *(k for k in args if k in ("--use-distributed-optimizer", "--use-megatron-fsdp")))
    args |= {"--micro-batch-size": plan.micro_batch_size, "--global-batch-size": job.global_batch,
             "--seq-length": job.seq_len}
    draft.wrote("micro_batch_size", "--micro-batch-size")
    match job.precision:
        case Precision.BF16:
            args["--bf16"] = True
        case Precision.FP16:
            args["--fp16"] = True
        case Precision.FP8:
            args |= {"--bf16": True, "--fp8-format": "hybrid"}
        case Precision.FP32:
            pass
    megatron_knobs(plan, sc, args, draft)
    return _config(ExportFormat.MEGATRON, MEGATRON_VERSION, plan, args, draft)


def _megatron_parallel(plan: Plan, sc: Scenario, draft: Draft) -> dict[str, object]:
    d = plan.dims
    args: dict[str, object] = {"--tensor-model-parallel-size": d.tp, "--pipeline-model-parallel-size": d.pp,
                               "--context-parallel-size": d.cp}
    if sc.model.is_moe:
        args |= {"--expert-model-parallel-size": d.ep, "--expert-tensor-parallel-size": d.etp}
    draft.wrote("dims", *args)
    if plan.virtual_stages > 1:
        args["--num-virtual-stages-per-pipeline-rank"] = plan.virtual_stages
        draft.wrote("virtual_stages", "--num-virtual-stages-per-pipeline-rank")
        draft.wrote("schedule", "--num-virtual-stages-per-pipeline-rank")
    if plan.blocks_per_stage is not None:
        args["--pipeline-model-parallel-layout"] = _megatron_layout(plan.blocks_per_stage)
        draft.wrote("blocks_per_stage", "--pipeline-model-parallel-layout")
    if plan.sequence_parallel:
        args["--sequence-parallel"] = True
        draft.wrote("sequence_parallel", "--sequence-parallel")
    if d.pp > 1 and plan.schedule in (Schedule.GPIPE, Schedule.ZERO_BUBBLE):
        draft.unsupported.append(f"schedule {plan.schedule.value}: Megatron-LM runs 1F1B (interleaved with virtual "
                                 "stages); it has no option for this schedule")
    return args


def _megatron_layout(blocks: list[int]) -> str:
    """--pipeline-model-parallel-layout: stages split by '|', E = embedding, t = decoder layer,
    L = loss (arguments.py help text), one stage per (virtual) chunk in schedule order."""
    stages = ["t" * n for n in blocks]
    stages[0], stages[-1] = "E" + stages[0], stages[-1] + "L"
    return "|".join(stages)


def _comments(header: list[str], unsupported: list[str], notes: list[str]) -> list[str]:
    lines = [f"# {h}" for h in header]
    lines += [f"# note: {n}" for n in notes]
    lines += [f"# not expressible: {u}" for u in unsupported]
    return lines


def _toml(options: dict[str, dict[str, object]], *, header: list[str], unsupported: list[str],
          notes: list[str]) -> str:
    lines = _comments(header, unsupported, notes)
    for section, values in options.items():
        lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _args_text(args: dict[str, object], *, header: list[str], unsupported: list[str], notes: list[str]) -> str:
    flags = [flag if value is True else f"{flag} {_arg_words(value)}" for flag, value in args.items()]
    body = " \\\n".join(flags)
    return "\n".join(_comments(header, unsupported, notes)) + "\n" + body + "\n"


def _arg_words(value: object) -> str:
    """One argument's value; a list is several words (argparse nargs='+')."""
    values = value if isinstance(value, list) else [value]
    return " ".join(shlex.quote(str(v)) for v in values)
