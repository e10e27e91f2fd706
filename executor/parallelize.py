"""One function per parallel axis, applied to planner.graph.transformer modules in a fixed order."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.utils.checkpoint import checkpoint

from executor.expert_parallel import layer_placement, shard_experts
from executor.mesh import Meshes
from executor.ulysses import cp_core, cp_positions, hybrid_groups
from executor.tied import use_vocab_parallel_head
from planner.plan import Axis, CpKind, OffloadState, Plan, Recompute, Schedule, ZeroStage
from planner.scenario import ModelSpec, PositionEmbedding
from planner.graph import MoE, Transformer


def check_supported(plan: Plan, spec: ModelSpec) -> None:
    """One-line ValueError for limits of this executor's runtime; general plan validity is
    planner.plan.check (the caller runs it first)."""
    d = plan.dims
    if d.tp > 1 and spec.vocab_size % d.tp:
        raise ValueError(f"dims.tp: {d.tp} must divide vocab_size={spec.vocab_size} (vocab-parallel embedding)")
    if d.cp > 1 and spec.attention_dropout > 0:
        raise ValueError("dims.cp: ring attention has no attention dropout; set attention_dropout=0")
    if plan.schedule == Schedule.ZERO_BUBBLE and d.pp > 1:
        raise ValueError("schedule: zero-bubble is not run by the executor; use gpipe, 1f1b or interleaved-1f1b")
    if set(plan.offload) - {OffloadState.OPTIMIZER} or (plan.offload and plan.zero_stage >= ZeroStage.GRADIENTS):
        raise ValueError("offload: this executor offloads only the optimizer state, with zero_stage 0 or 1")
    if plan.vocab_parallel and (d.tp > 1 or d.cp > 1 or spec.tie_word_embeddings or plan.schedule != Schedule.GPIPE
                                or plan.zero_stage >= ZeroStage.GRADIENTS or plan.virtual_stages > 1):
        raise ValueError("vocab_parallel: this executor runs it with tp=cp=1, untied embeddings, schedule gpipe, "
                         "one virtual stage and zero_stage 0 or 1")


def parallelize(model: Transformer, plan: Plan, *, meshes: Meshes, seq_len: int) -> nn.Module:
    """Apply the plan to one materialised (pipeline-stage) model, in this order:

    MoE first (EP/ETP replace expert weights with local rows/shards before anything wraps them); TP next
    (DTensor plans address modules by FQN); CP swaps attention cores, which TP left alone;
    recompute wraps block forwards before FSDP registers its hooks around them (torchtitan's
    order); FSDP last, because it shards whatever parameters the earlier steps left.
    """
    spec = model.spec
    if spec.is_moe and max(plan.dims.ep, plan.dims.etp, plan.dims.tp) > 1:
        apply_moe(model, plan=plan, meshes=meshes)
    if plan.dims.tp > 1:
        apply_tp(model, tp_mesh=meshes.world[Axis.TP.value], sequence_parallel=plan.sequence_parallel, spec=spec)
    if plan.dims.cp > 1:
        apply_cp(model, meshes=meshes, seq_len=seq_len, kind=plan.cp_kind, a2a=plan.cp_a2a)
    if plan.recompute != Recompute.NONE:
        apply_recompute(model, mode=plan.recompute)
    if plan.zero_stage >= ZeroStage.GRADIENTS and meshes.dp_cp.size() > 1:
        apply_fsdp(model, meshes=meshes, reshard_after_forward=plan.zero_stage == ZeroStage.PARAMETERS)
    return model


def moe_ordinals(spec: ModelSpec) -> dict[int, int]:
    """Block index -> index among MoE blocks (how plan.expert_placement is numbered)."""
    moe_blocks = [i for i in range(spec.num_hidden_layers) if spec.is_moe_layer(i)]
    return {block: n for n, block in enumerate(moe_blocks)}


def apply_moe(model: Transformer, *, plan: Plan, meshes: Meshes) -> None:
    """Experts on the folded grid (EP, ETP); routed slots split over the attention tp group."""
    ordinals = moe_ordinals(model.spec)
    groups = {"ep": meshes.group(Axis.EP), "etp_mesh": meshes.expert[Axis.ETP.value], "tp": meshes.group(Axis.TP)}
    for key, block in model.layers.items():
        if isinstance(getattr(block, "moe", None), MoE):
            placement = layer_placement(plan, model.spec, moe_ordinal=ordinals[int(key)])
            shard_experts(block.moe, placement=placement, ep_rank=meshes.local_rank(Axis.EP), **groups)


def _tp_mlp_plan(spec: ModelSpec, *, sp: bool, moe: bool) -> dict[str, object]:
    """Dense MLP: column- then row-parallel. MoE: replicated tokens in (see executor.expert_parallel);
    under SP they are gathered on entry and this rank's sequence shard is kept on exit."""
    seq = Shard(1) if sp else Replicate()
    if moe:
        return {"moe": PrepareModuleInputOutput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_input=True,
            output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),), use_local_output=True)} if sp else {}
    plan: dict[str, object] = {"feed_forward.w1": ColwiseParallel(),
                               "feed_forward.w2": RowwiseParallel(output_layouts=seq)}
    if spec.hidden_act.gated:
        plan["feed_forward.w3"] = ColwiseParallel()
    if sp:
        plan["feed_forward"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return plan


def _tp_block_plan(spec: ModelSpec, *, sp: bool, moe: bool) -> dict[str, object]:
    """Megatron-style TP (Shoeybi et al. 2019) with optional sequence parallelism (Korthikanti et al. 2022)."""
    seq = Shard(1) if sp else Replicate()
    plan: dict[str, object] = {"attention.wo": RowwiseParallel(output_layouts=seq)}
    if spec.uses_mla:
        plan |= {"attention.wkv_b": ColwiseParallel()}
        plan |= {"attention.wq_b": ColwiseParallel()} if spec.q_lora_rank else {"attention.wq": ColwiseParallel()}
    else:
        plan |= {f"attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")}
    if sp:
        # the RoPE table stays a plain tensor (None): a Replicate() DTensor breaks x * cos
        plan |= {"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                 "attention": PrepareModuleInput(input_layouts=(Shard(1), None),
                                                 desired_input_layouts=(Replicate(), None))}
    return plan | _tp_mlp_plan(spec, sp=sp, moe=moe)


def apply_tp(model: Transformer, *, tp_mesh: DeviceMesh, sequence_parallel: bool, spec: ModelSpec) -> None:
    seq = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, object] = {}
    learned = spec.position_embedding == PositionEmbedding.LEARNED
    if model.tok_embeddings is not None:
        # learned positions are added to the whole sequence, then it is split (Megatron's order)
        embed_out = Replicate() if learned else seq
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=embed_out)
        if learned and sequence_parallel:
            model.embed = partial(_sequence_sharded, model.embed, tp_mesh=tp_mesh)
    if model.output is not None:
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate(), use_local_output=True)
    if model.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    parallelize_module(model, tp_mesh, top)
    if model.norm is not None and model.output is None:
        use_vocab_parallel_head(model, tp_mesh=tp_mesh)
    if sequence_parallel:
        # Transformer.forward sizes the RoPE table from its (now sequence-sharded) hidden states.
        model.rope = partial(_full_sequence_rope, model.rope, tp=tp_mesh.size())
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, _tp_block_plan(spec, sp=sequence_parallel, moe=hasattr(block, "moe")))


def _sequence_sharded(embed, tokens: torch.Tensor, *, tp_mesh: DeviceMesh) -> torch.Tensor:
    """This rank's sequence shard of the (replicated) embeddings; backward gathers the shards."""
    whole = DTensor.from_local(embed(tokens), tp_mesh, [Replicate()], run_check=False)
    return whole.redistribute(placements=[Shard(1)]).to_local()


def _full_sequence_rope(rope, seq_len: int, *, tp: int) -> torch.Tensor | None:
    return rope(seq_len * tp)


def apply_cp(model: Transformer, *, meshes: Meshes, seq_len: int, kind: CpKind, a2a: int) -> None:
    """The CP kind's attention core in every block (ring, bidirectional ring, Ulysses, or Ulysses
    over a2a ranks around a ring); positions (RoPE rows or learned ids) follow that kind's layout."""
    cp, rank = meshes.size(Axis.CP), meshes.local_rank(Axis.CP)
    positions = cp_positions(kind, seq_len, rank=rank, cp=cp, a2a=a2a)
    hybrid = hybrid_groups(meshes.cp_groups(), a2a=a2a) if kind == CpKind.HYBRID else None
    for block in model.layers.values():
        block.attention.core = cp_core(kind, meshes.group(Axis.CP), hybrid=hybrid)
    if model.spec.position_embedding == PositionEmbedding.ROPE:
        # Transformer.rope(s) slices freqs[:s]; holding exactly this rank's rows makes that right.
        model.freqs = model.freqs[positions.to(model.freqs.device)].clone()
    elif isinstance(model.pos_embeddings, nn.Embedding):
        model.pos_embeddings.register_forward_pre_hook(lambda m, _a: (positions.to(m.weight.device),))


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_recompute(model: Transformer, *, mode: Recompute) -> None:
    """FULL recomputes whole blocks; SELECTIVE only the attention core (Korthikanti et al. 2022).

    The forward is wrapped in place (no wrapper module), so parameter FQNs and checkpoints are
    the same with and without recompute.
    """
    for block in model.layers.values():
        match mode:
            case Recompute.FULL:
                block.forward = partial(_checkpointed, block.forward)
            case Recompute.SELECTIVE:
                block.attention.core.forward = partial(_checkpointed, block.attention.core.forward)
            case Recompute.NONE:
                pass


def apply_fsdp(model: Transformer, *, meshes: Meshes, reshard_after_forward: bool) -> None:
    """FSDP2 per block, then the root (embeddings, norm, head); ZeRO-3 reshards after forward.

    Expert weights are sharded first, over their own replicas (edp of the folded grid), so the
    block's dp x cp sharding leaves them alone. FSDP averages over the shard group; an expert's
    gradient already sums the tokens of its EP peers, so it is divided by dp*cp like the rest.
    """
    divisor = meshes.size(Axis.DP) * meshes.size(Axis.CP)
    for block in model.layers.values():
        if isinstance(getattr(block, "moe", None), MoE):
            experts = fully_shard(block.moe.experts, mesh=meshes.expert[Axis.EDP.value],
                                  reshard_after_forward=reshard_after_forward)
            experts.set_gradient_divide_factor(divisor)
        fully_shard(block, mesh=meshes.dp_cp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=meshes.dp_cp, reshard_after_forward=reshard_after_forward)


def materialise(model: Transformer, *, device: torch.device, seed: int) -> Transformer:
    """meta -> real storage -> the deterministic per-FQN init, so every plan starts equal."""
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
