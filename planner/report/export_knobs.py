"""Issue 16's plan fields as framework options: CP kind, offload, vocab_parallel, FP8 recipe, DP balance.

Versions and files as in export.py; semantics read from the tagged sources:
- torchtitan v0.2.2: torchtitan/config/job_config.py (Parallelism.context_parallel_rotate_method,
  context_parallel_load_balancer, Training.enable_cpu_offload, Model.converters, Quantize);
  torchtitan/models/llama3/infra/parallelize.py (enable_cpu_offload -> FSDP2 CPUOffloadPolicy, FSDP only);
  torchtitan/components/quantization/float8.py, mx.py (converter names); docs/float8.md (dynamic scaling only);
  torchtitan/models/llama3/__init__.py (document masks come from the flavor's attn_mask_type "block_causal").
- Megatron-LM core_v0.15.0: megatron/training/arguments.py (--cp-comm-type, --hierarchical-context-parallel-sizes,
  --fp8-recipe, --optimizer-cpu-offload and its check that --use-precision-aware-optimizer is set,
  --reset-attention-mask); megatron/core/model_parallel_config.py (hierarchical sizes: a2a level first);
  megatron/core/optimizer/optimizer_config.py (the precision-aware optimizer needs the distributed one);
  megatron/core/fp8_utils.py (tensorwise = TE Float8CurrentScaling, mxfp8 = MXFP8BlockScaling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.plan import BalancePolicy, CpKind, Fp8Recipe, OffloadState, OffloadTier, Plan, ZeroStage
from planner.scenario import Precision, Scenario

# torchtitan's model-converter registry names (register_model_converter in float8.py / mx.py)
_TITAN_CONVERTER = {Fp8Recipe.DELAYED: "quantize.linear.float8", Fp8Recipe.CURRENT: "quantize.linear.float8",
                    Fp8Recipe.MXFP8: "quantize.linear.mx"}
# torchtitan recipe_name: Float8Linear "tensorwise" (dynamic per-tensor), MXLinear default "mxfp8_cublas"
_TITAN_RECIPE = {Fp8Recipe.DELAYED: "tensorwise", Fp8Recipe.CURRENT: "tensorwise", Fp8Recipe.MXFP8: "mxfp8_cublas"}
# Megatron --fp8-recipe choices (arguments.py): delayed, tensorwise (current scaling), mxfp8, blockwise
_MEGATRON_RECIPE = {Fp8Recipe.DELAYED: "delayed", Fp8Recipe.CURRENT: "tensorwise", Fp8Recipe.MXFP8: "mxfp8"}
# Megatron --cp-comm-type choices: p2p (ring), a2a (Ulysses), allgather, a2a+p2p (hierarchical)
_MEGATRON_CP = {CpKind.RING: "p2p", CpKind.RING_BIDIRECTIONAL: "p2p", CpKind.ALL_TO_ALL: "a2a",
                CpKind.HYBRID: "a2a+p2p"}
_FSDP_OFFLOAD = frozenset({OffloadState.OPTIMIZER, OffloadState.GRADIENTS, OffloadState.PARAMETERS})


@dataclass(slots=True)
class Draft:
    """An export being written: what cannot be expressed, notes, and per plan field the options it became
    (an empty list: the framework's default already does what the plan says)."""

    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: dict[str, list[str]] = field(default_factory=dict)

    def wrote(self, plan_field: str, *options: str) -> None:
        self.written.setdefault(plan_field, []).extend(options)


def effective_balance(plan: Plan, sc: Scenario) -> BalancePolicy | None:
    """The plan's balance policy, else the scenario's [job.sequences] one; None without documents."""
    if sc.job.sequences is None:
        return None
    return plan.balance if plan.balance is not None else sc.job.sequences.balance


def _states(states: list[OffloadState]) -> str:
    return "+".join(s.value for s in states)


# ---- torchtitan ------------------------------------------------------------------------------

def titan_knobs(plan: Plan, sc: Scenario, options: dict[str, dict[str, object]], draft: Draft) -> None:
    _titan_cp(plan, options["parallelism"], draft)
    _titan_offload(plan, options["training"], draft)
    _titan_fp8(plan, sc, options, draft)
    if plan.vocab_parallel:
        draft.unsupported.append("vocab_parallel: torchtitan keeps tok_embeddings on the first and output on the "
                                 "last model part (module_fqns_per_model_part); it cannot split the vocabulary "
                                 "over every pipeline stage")
    _sequences(plan, sc, draft, "torchtitan", mask=[])


def _titan_cp(plan: Plan, par: dict[str, object], draft: Draft) -> None:
    if plan.dims.cp == 1:
        if plan.cp_kind != CpKind.RING:
            draft.unsupported.append(f"cp_kind {plan.cp_kind.value}: cp = 1, no context parallelism to configure")
        return
    # the zigzag ring: headtail load balancing, KV shards passed rank to rank (torch's _AllToAllRotater
    # sends each step's KV to the next rank; 'allgather' gathers all KV at once instead)
    par |= {"context_parallel_load_balancer": "headtail", "context_parallel_rotate_method": "alltoall"}
    draft.wrote("cp_kind", "parallelism.context_parallel_load_balancer", "parallelism.context_parallel_rotate_method")
    match plan.cp_kind:
        case CpKind.RING:
            pass
        case CpKind.RING_BIDIRECTIONAL:
            draft.unsupported.append("cp_kind ring-bidirectional: torchtitan's ring passes KV one way; written as "
                                     "the one-way ring")
        case CpKind.ALL_TO_ALL | CpKind.HYBRID:
            what = f"cp_kind {plan.cp_kind.value}" + (f", cp_a2a {plan.cp_a2a}" if plan.cp_kind == CpKind.HYBRID else "")
            draft.unsupported.append(f"{what} (Ulysses degree {plan.ulysses_degree()}): "
                                     "torchtitan v0.2.2's context parallelism is ring attention only "
                                     "(context_parallel_rotate_method moves KV shards, it never scatters heads); "
                                     "written as the ring")


def _titan_offload(plan: Plan, training: dict[str, object], draft: Draft) -> None:
    host = [s for s, tier in plan.offload.items() if tier == OffloadTier.HOST and s in _FSDP_OFFLOAD]
    _offload_limits(plan, draft, framework="torchtitan",
                    activations_why="torchtitan v0.2.2 has no activation offload option")
    if not host:
        return
    if plan.zero_stage < ZeroStage.GRADIENTS:
        draft.unsupported.append(f"offload {_states(host)} -> host: torchtitan's enable_cpu_offload acts only "
                                 "through FSDP (data_parallel_shard_degree), which this plan does not use; not written")
        return
    training["enable_cpu_offload"] = True
    draft.wrote("offload", "training.enable_cpu_offload")
    if set(host) != _FSDP_OFFLOAD:
        draft.unsupported.append(f"offload {_states(host)} -> host only: torchtitan's enable_cpu_offload (FSDP2 "
                                 "CPUOffloadPolicy) moves parameters, gradients and optimizer state together; "
                                 "written as all three, more host traffic than priced")


def _offload_limits(plan: Plan, draft: Draft, *, framework: str, activations_why: str) -> None:
    """What neither framework's flags express: NVMe tiers, and (per framework) activation offload."""
    for state, tier in plan.offload.items():
        if tier == OffloadTier.NVME:
            draft.unsupported.append(f"offload {state.value} -> nvme: {framework} offloads to host memory only; "
                                     "not written")
        elif state == OffloadState.ACTIVATIONS:
            draft.unsupported.append(f"offload activations -> host: {activations_why}; not written")


def _titan_fp8(plan: Plan, sc: Scenario, options: dict[str, dict[str, object]], draft: Draft) -> None:
    if sc.job.precision != Precision.FP8:
        return
    recipe = plan.fp8_recipe or Fp8Recipe.CURRENT
    converter = _TITAN_CONVERTER[recipe]
    options["training"]["mixed_precision_param"] = "bfloat16"  # the converters swap only nn.Linear
    options.setdefault("model", {})["converters"] = [converter]
    options[converter] = {"recipe_name": _TITAN_RECIPE[recipe]}
    draft.wrote("fp8_recipe", "model.converters", f"{converter}.recipe_name")
    if plan.fp8_recipe is None:
        draft.unsupported.append("precision fp8 without fp8_recipe: priced as every op in FP8; torchtitan converts "
                                 "only linear layers; written as tensorwise float8 linears, the rest bfloat16")
    elif recipe == Fp8Recipe.DELAYED:
        draft.unsupported.append("fp8_recipe delayed: torchtitan's float8 linears scale dynamically (tensorwise or "
                                 "rowwise, docs/float8.md); written as tensorwise current scaling")
    if sc.model.is_moe:
        draft.unsupported.append("fp8 expert GEMMs: torchtitan's grouped-GEMM converters (quantize.grouped_mm.*) "
                                 "are a prototype; not written, the routed experts run in bfloat16")


# ---- Megatron-LM -----------------------------------------------------------------------------

def megatron_knobs(plan: Plan, sc: Scenario, args: dict[str, object], draft: Draft) -> None:
    if plan.dims.cp > 1:
        args["--cp-comm-type"] = _MEGATRON_CP[plan.cp_kind]
        draft.wrote("cp_kind", "--cp-comm-type")
        if plan.cp_kind == CpKind.HYBRID:  # a2a level first (model_parallel_config.py), then the ring
            args["--hierarchical-context-parallel-sizes"] = [plan.cp_a2a, plan.dims.cp // plan.cp_a2a]
            draft.wrote("cp_a2a", "--hierarchical-context-parallel-sizes")
        elif plan.cp_kind == CpKind.RING_BIDIRECTIONAL:
            draft.unsupported.append("cp_kind ring-bidirectional: Megatron's p2p ring (Transformer Engine) passes KV "
                                     "one way; written as --cp-comm-type p2p")
    elif plan.cp_kind != CpKind.RING:
        draft.unsupported.append(f"cp_kind {plan.cp_kind.value}: cp = 1, no context parallelism to configure")
    _megatron_offload(plan, args, draft)
    if plan.fp8_recipe is not None and sc.job.precision == Precision.FP8:
        args["--fp8-recipe"] = _MEGATRON_RECIPE[plan.fp8_recipe]
        draft.wrote("fp8_recipe", "--fp8-recipe")
    elif sc.job.precision == Precision.FP8:
        draft.unsupported.append("precision fp8 without fp8_recipe: priced as every op in FP8; Megatron runs only "
                                 "the linear GEMMs in FP8 (Transformer Engine), with its default recipe delayed")
    if plan.vocab_parallel:
        draft.unsupported.append("vocab_parallel: Megatron-LM core_v0.15.0 keeps the embedding on the first and the "
                                 "output layer on the last pipeline stage (--account-for-embedding-in-pipeline-split "
                                 "only counts them as layers); no vocabulary split over stages")
    _sequences(plan, sc, draft, "Megatron-LM", mask=["--reset-position-ids", "--reset-attention-mask"])
    if sc.job.sequences is not None:
        args |= {"--reset-position-ids": True, "--reset-attention-mask": True}


def _megatron_offload(plan: Plan, args: dict[str, object], draft: Draft) -> None:
    _offload_limits(plan, draft, framework="Megatron-LM",
                    activations_why="TransformerConfig.cpu_offloading exists in megatron/core but arguments.py "
                                    "has no flag for it")
    for state, tier in plan.offload.items():
        if tier == OffloadTier.HOST and state not in (OffloadState.ACTIVATIONS, OffloadState.OPTIMIZER):
            draft.unsupported.append(f"offload {state.value} -> host: Megatron-LM core_v0.15.0 can keep only the "
                                     "optimizer state on the host (--optimizer-cpu-offload); not written")
    if plan.offload.get(OffloadState.OPTIMIZER) != OffloadTier.HOST:
        return
    # the CPU optimizer reuses the precision-aware optimizer's path, which needs the distributed optimizer
    args |= {"--use-distributed-optimizer": True, "--use-precision-aware-optimizer": True,
             "--optimizer-cpu-offload": True, "--optimizer-offload-fraction": 1.0}
    draft.wrote("offload", "--optimizer-cpu-offload", "--optimizer-offload-fraction", "--use-precision-aware-optimizer")
    draft.notes.append("offload optimizer -> host: Megatron steps the offloaded state on the host (its "
                       "HybridDeviceOptimizer, CPU Adam)")
    if plan.zero_stage == ZeroStage.NONE:
        draft.unsupported.append("zero_stage 0 with optimizer offload: Megatron's CPU optimizer runs inside its "
                                 "distributed optimizer; written with --use-distributed-optimizer (ZeRO-1)")


# ---- both ------------------------------------------------------------------------------------

def _sequences(plan: Plan, sc: Scenario, draft: Draft, framework: str, *, mask: list[str]) -> None:
    """Packed documents: both frameworks concatenate documents and cut rows (concat-and-chunk, as the
    planner prices); the document mask and the DP balance are what differ."""
    balance = effective_balance(plan, sc)
    if balance is None:
        if plan.balance is not None:
            draft.unsupported.append(f"balance {plan.balance.value}: the scenario has no [job.sequences]; "
                                     "nothing to balance")
        return
    if mask:
        draft.wrote("job.sequences", *mask)
    else:
        draft.unsupported.append("job.sequences document masks: torchtitan takes them from the model flavor "
                                 "(attn_mask_type = \"block_causal\", e.g. llama3 \"8B_flex\"), not the job "
                                 "config; pick such a [model] flavor")
    match balance:
        case BalancePolicy.NONE:  # rows in sampling order, a contiguous block per DP rank: both defaults
            draft.wrote("balance")
            draft.notes.append(f"balance none: {framework} deals rows to data-parallel ranks in sampling order, "
                               "as priced")
        case BalancePolicy.SORT_AND_PACK | BalancePolicy.ZEPPELIN:
            draft.unsupported.append(f"balance {balance.value}: {framework} deals rows to data-parallel ranks in "
                                     "sampling order and has no balancing option; expect the unbalanced "
                                     "per-rank attention work")
