"""Per-layer compute time for each pass (forward, backward-input, backward-weight, recompute).

Operators come from the traced graph: each is split by the plan (tensor, sequence, context and expert
parallelism), scaled from the traced sample to the micro-batch, and timed on the roofline of the hardware
profile: GEMMs and attention at efficiency(FLOPs of one call), the rest at achieved memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import add

from planner.cost.experts import load_factor
from planner.cost.kernels import causal_fraction, flash_rate, fp8_cast_bytes, gemm_s, unpad_bytes
from planner.cost.ops import GraphKey, OpCost, OpCounts, Region, layer_ops, op_counts
from planner.graph import BlockKind, ModelGraph, OpKind
from planner.hardware import HardwareProfile, HostOverhead
from planner.cost.fp8 import BF16_WEIGHT_BYTES, GEMM_INPUT_SHARE, cast_bytes_per_element
from planner.plan import Fp8Recipe, Plan, Recompute
from planner.scenario import (AttentionKernel, FrameworkRuntime, Fusion, JobSpec, Precision, SelectiveRecompute,
                              frameworks)

# FlashAttention's backward recomputes the attention matrix: 5 GEMM-sized products instead of
# the 4 an autograd count reports (Dao 2023, FlashAttention-2, Sec. 3.1).
FLASH_BWD_FLOPS_FACTOR = 1.25
# A memory-bound op's backward reads the saved input and the output gradient and writes the
# input gradient: about twice the forward's traffic.
MEMORY_BOUND_BWD_BYTES_FACTOR = 2.0
# Ring CP: bytes of merge traffic per element of the rank's local Q (forward: the partial output; backward:
# dQ) for each ring step after the first, plus per element of local K and V (backward: dK, dV), from the
# frameworks' per-step ops. TE (AttnFuncWithCPAndKVP2P, TransformerEngine attention.py, Feb 2025): forward
# out += out_step * exp(lse_step - lse), a float32 product (read 2, write 4) added into the bf16 output
# (read 2 + 4, write 2) = 14; backward dq.add_(dq_step) in bf16 (2 + 2 + 2) = 6, dK/dV cat (2 + 2) and add
# (6) = 10. torch context_parallel (torch/distributed/tensor/experimental/_attention.py, _SDPAMerger with
# convert_to_f32=True): forward cast to fp32 (2 + 4), out - block_out (4 + 4 + 4), times sigmoid(lse
# delta) (4 + 4), subtract (4 + 4 + 4) = 38 on full-q steps, half of it plus a float32 torch.cat of the
# whole output (8) on the half-q steps, ~32 averaged; backward float32 += of a bf16 gradient (4 + 2 + 4)
# = 10 per dQ element, 10 plus the float32 cat that feeds the next rank (4 + 4) = 18 per dK, dV element.
RING_MERGE_BYTES_FWD = {False: 14.0, True: 32.0}
RING_MERGE_BYTES_DQ = {False: 6.0, True: 10.0}
RING_MERGE_BYTES_DKV = {False: 10.0, True: 18.0}
# Eager (pre-FlashAttention) attention materialises the b*a*s^2 score matrix: bytes moved per
# score element. Forward: QK^T writes fp16 scores (2), fused scale-mask-softmax reads and writes
# (4), dropout reads, writes its output and a 1-byte mask (5), AV reads (2) = 13. Backward: the
# mirror image with gradients plus the saved softmax/mask re-read = 21 (Megatron-LM 2021-22 kernels,
# Korthikanti et al. 2022 Sec. 4.1 lists the same tensors).
EAGER_SCORE_BYTES_FWD = 13.0
EAGER_SCORE_BYTES_BWD = 21.0


@dataclass(frozen=True, slots=True)
class PassTimes:
    """Seconds for one micro-batch through one layer on one GPU."""

    fwd_s: float = 0.0
    bwd_input_s: float = 0.0
    bwd_weight_s: float = 0.0
    recompute_s: float = 0.0
    attention_fwd_s: float = 0.0  # the part CP ring traffic overlaps with
    attention_bwd_s: float = 0.0
    gemm_fwd_s: float = 0.0  # the GEMM part of fwd_s (what per-op SAC saves half of)
    # how much longer the host's launches took than the kernels (already in fwd_s / bwd_input_s):
    # GPU-side blocking traffic runs in that slack (hidden_under_host)
    host_excess_fwd_s: float = 0.0
    host_excess_bwd_s: float = 0.0

    def __add__(self, other: PassTimes) -> PassTimes:
        return PassTimes(*map(add, self._tuple(), other._tuple()))  # field by field (map: no generator frames)

    def past_host_fwd_s(self, exposed_s: float) -> float:
        """Exposed GPU-side traffic of a forward whose host launches outlast its kernels: a blocking
        collective (EP all-to-all, TP all-reduce) is one more item on the compute stream, so the
        pass takes max(host, kernels + traffic) and only traffic beyond the host's slack shows."""
        return max(0.0, exposed_s - self.host_excess_fwd_s)

    def past_host_bwd_s(self, exposed_s: float) -> float:
        return max(0.0, exposed_s - self.host_excess_bwd_s)

    def scaled(self, k: float) -> PassTimes:
        return PassTimes(*(a * k for a in self._tuple()))

    def _tuple(self) -> tuple[float, ...]:
        return (self.fwd_s, self.bwd_input_s, self.bwd_weight_s, self.recompute_s,
                self.attention_fwd_s, self.attention_bwd_s, self.gemm_fwd_s, self.host_excess_fwd_s,
                self.host_excess_bwd_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    """How one micro-batch of one layer divides over a GPU: everything timing needs from the plan."""

    batch_scale: float  # micro-batch sequences / traced sequences
    tokens: float  # tokens of one micro-batch on one GPU (after the CP split)
    tp: int
    cp: int
    ep: int
    sp: bool
    attention_calls: int  # attention kernel calls per layer: cp ring blocks; 1 after a Ulysses all-to-all
    imbalance: float
    precision: Precision  # of the GEMMs
    recompute: Recompute
    flash: bool  # fused attention; False = eager softmax over materialised scores
    score_elements: float  # attention scores per layer per micro-batch on one GPU (eager only)
    attention: AttentionKernel = AttentionKernel.FLASH  # which fused kernel (its rates are in the profile)
    etp: int = 1
    experts_local: int = 1  # routed experts on one EP rank (one grouped GEMM runs them all)
    grouped_gemm: bool = False
    fusion: Fusion = Fusion.EAGER
    selective: SelectiveRecompute = SelectiveRecompute.ATTENTION_CORE
    cuda_graphs: bool = False
    kv_ratio: float = 1.0  # K,V heads / Q heads the attention kernel sees (GQA)
    ring_merge_fp32: bool = False  # FrameworkRuntime.ring_merge_fp32
    attention_unpads: bool = False  # FrameworkRuntime.attention_unpads (kernels.unpad_bytes)
    fp8_recipe: Fp8Recipe | None = None  # scaling/cast bytes of the FP8 GEMMs (cost/fp8.py)
    fp8_saved_inputs: bool = False  # FP8 linears keep 1-byte inputs for the wgrad (cost/memory.py)
    # the framework's measured host cost per traced op (None: the profile's launch model) and
    # its grouped-GEMM launches (FrameworkRuntime.grouped_gemm_streams; 0 = one grouped kernel)
    host_us_per_op: float | None = None
    host_us_per_expert_op: float | None = None
    gemm_streams: int = 0

    def work_share(self, region: Region) -> float:
        """Fraction of the traced op's work (scaled to the micro-batch) one GPU does."""
        match region:
            case Region.TP:
                return self.batch_scale / (self.tp * self.cp)
            case Region.SP:
                return self.batch_scale / (self.cp * (self.tp if self.sp else 1))
            case Region.EXPERT:
                return self.batch_scale * self.imbalance / (self.tp * self.cp)

    def calls(self, op: OpCost) -> float:
        """Kernel launches the GPU's share of `op` is cut into.

        A traced op is one expert's GEMM; the GPU runs it for the tokens its whole EP group routes
        to that expert, i.e. ep times the op's share in one call (fraction 1/ep). Ring attention
        runs one block per ring rank (cp / the all-to-all degree).
        """
        if op.region == Region.EXPERT:
            return 1.0 / self.ep
        return float(self.attention_calls) if op.kind == OpKind.ATTENTION else 1.0


def split_for(plan: Plan, *, graph: ModelGraph, precision: Precision, flash: bool = True,
              job: JobSpec | None = None) -> Split:
    d = plan.dims
    heads = graph.num_attention_heads / d.tp
    scores = plan.micro_batch_size * heads * graph.seq_len * graph.seq_len / d.cp
    moe = next((layer.moe for layer in graph.layers if layer.moe is not None), None)
    imbalance = load_factor(plan, moe)  # placement, routing trace and capacity factor (experts.py)
    job = job or JobSpec(seq_len=graph.seq_len, global_batch=1)
    runtime = frameworks().get(job.framework)
    attention = job.attention if job.attention.fused else AttentionKernel.FLASH
    recipe = plan.fp8_recipe if precision == Precision.FP8 else None
    fp8_saved = precision == Precision.FP8 and runtime is not None and runtime.fp8_saved_inputs
    return Split(fp8_recipe=recipe, fp8_saved_inputs=fp8_saved, batch_scale=plan.micro_batch_size / graph.sample_batch,
                 tokens=plan.micro_batch_size * graph.seq_len / d.cp, tp=d.tp, cp=d.cp, ep=d.ep,
                 attention_calls=d.cp // plan.ulysses_degree(),
                 sp=plan.sequence_parallel, imbalance=imbalance,
                 precision=precision, recompute=plan.recompute, flash=flash, score_elements=scores,
                 attention=attention, etp=d.etp, experts_local=max(1, moe.num_experts // d.ep) if moe else 1,
                 grouped_gemm=job.grouped_gemm, fusion=job.fusion, selective=job.selective_recompute,
                 cuda_graphs=job.cuda_graphs, kv_ratio=_kv_ratio(graph, runtime),
                 ring_merge_fp32=bool(runtime and runtime.ring_merge_fp32),
                 attention_unpads=bool(runtime and runtime.attention_unpads),
                 host_us_per_op=runtime.host_us_per_op if runtime else None,
                 host_us_per_expert_op=runtime.host_us_per_expert_op if runtime else None,
                 gemm_streams=runtime.grouped_gemm_streams if runtime and job.grouped_gemm else 0)


def _kv_ratio(graph: ModelGraph, runtime: FrameworkRuntime | None) -> float:
    """K,V heads per Q head the attention kernel sees: 1 where the model repeats GQA heads first."""
    if runtime is not None and runtime.attention_repeats_kv:
        return 1.0
    return graph.num_key_value_heads / graph.num_attention_heads


def op_times(op: OpCost, *, split: Split, hw: HardwareProfile) -> PassTimes:
    share = split.work_share(op.region)
    fwd_flops, bwd_flops = op.fwd_flops * share, op.bwd_flops * share
    match op.kind:
        case OpKind.MATMUL | OpKind.EXPERT_MATMUL | OpKind.ROUTER:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            if hw.gemm is not None and op.dims[2]:
                return _shaped_gemm(op, per_call, fwd_flops, bwd_flops, split=split, hw=hw)
            rate = per_call / hw.matmul_s(per_call, precision=_gemm_precision(op, split))
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops / rate
            weight_share = op.bwd_weight_flops / op.bwd_flops if op.bwd_flops else 0.0
            cast_s = 0.0
            if split.fp8_recipe is not None and _gemm_precision(op, split) == Precision.FP8:
                # no shapes: the recipe's cast traffic from the op's bf16 bytes
                input_elements = GEMM_INPUT_SHARE * op.bytes_moved * share / BF16_WEIGHT_BYTES
                cast_s = hw.memory_bound_s(input_elements * _cast_per_element(split))
            return PassTimes(fwd_s=fwd_s + cast_s, bwd_input_s=bwd_s * (1 - weight_share) + cast_s,
                             bwd_weight_s=bwd_s * weight_share + cast_s, gemm_fwd_s=fwd_s)
        case OpKind.ATTENTION if split.flash:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            rates = hw.flash.get(split.attention.value)
            if rates is not None and op.dims[0]:
                return _flash(op, fwd_flops, split=split, hw=hw, rates=rates)
            rate = per_call / hw.attention_s(per_call, precision=_attention_precision(split))
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops * FLASH_BWD_FLOPS_FACTOR / rate
            return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)
        case OpKind.ATTENTION:
            return _eager_attention(fwd_flops, bwd_flops, split=split, hw=hw)
        case _:
            fwd_s = hw.memory_bound_s(op.bytes_moved * share)
            return PassTimes(fwd_s=fwd_s, bwd_input_s=fwd_s * MEMORY_BOUND_BWD_BYTES_FACTOR)


def _gemm_precision(op: OpCost, split: Split) -> Precision:
    """FP8 recipes run the transformer blocks' linear layers in FP8, everything else in bf16."""
    if split.precision == Precision.FP8 and not op.fp8:
        return Precision.BF16
    return split.precision


def _cast_per_element(split: Split) -> float:
    """Cast bytes per FP8 GEMM input element: the plan's recipe (fp8.py) in this stack's fusion."""
    return cast_bytes_per_element(split.fp8_recipe, fused=split.fusion != Fusion.EAGER)


def _attention_precision(split: Split) -> Precision:
    """Attention stays 16-bit under FP8 recipes (TE and torchao quantise linear layers only)."""
    return Precision.BF16 if split.precision == Precision.FP8 else split.precision


def _shaped_gemm(op: OpCost, per_call: float, fwd_flops: float, bwd_flops: float, *, split: Split,
                 hw: HardwareProfile) -> PassTimes:
    """Forward, input-gradient and weight-gradient GEMMs timed by shape (cost/kernels.py).

    One call's n and k are the traced ones split by TP (experts: expert TP) on the parallel
    dimension; m follows from the call's FLOPs. A rank's experts run as one grouped GEMM when
    the stack has one, else one kernel each; a multi-stream grouped GEMM (TE GroupedLinear) runs
    them in rounds of `gemm_streams` concurrent kernels whose tiles share the SMs. FP8 linears add
    their cast traffic.
    """
    _, n, k = op.dims
    div = split.etp if op.region == Region.EXPERT else split.tp if op.region == Region.TP else 1
    n, k = (n, k / div) if op.row_parallel else (n / div, k)
    m = per_call / (2.0 * n * k)
    precision = _gemm_precision(op, split)
    fp8 = precision == Precision.FP8
    peak = hw.peak_flops(precision) * (hw.gemm.fp8_ratio if fp8 else 1.0)
    groups = float(split.experts_local) if op.region == Region.EXPERT else 1.0
    if split.gemm_streams:  # one GEMM per expert, `gemm_streams` of them running at once
        groups = min(groups, float(split.gemm_streams))
    kw = {"rates": hw.gemm, "peak_flops": peak, "bandwidth_bps": hw.memory_bandwidth_gbs * 1e9,
          "elem_bytes": precision.bytes, "groups": groups, "grouped": split.grouped_gemm}
    calls = fwd_flops / per_call / groups  # kernels (or grouped kernels) this op's share stands for
    fwd_s = calls * gemm_s(m, n, k, **kw)
    weight_share = op.bwd_weight_flops / op.bwd_flops if op.bwd_flops else 0.0
    scale = bwd_flops / (2.0 * fwd_flops) if fwd_flops else 0.0  # 1 for a GEMM with a weight
    input_s = calls * scale * 2 * (1 - weight_share) * gemm_s(m, k, n, **kw)
    weight_s = calls * scale * 2 * weight_share * gemm_s(k, n, m, **kw)
    if fp8:
        cast_f, cast_b = fp8_cast_bytes(m, n, k, per=_cast_per_element(split))
        fwd_s += hw.memory_bound_s(calls * groups * cast_f)
        input_s += hw.memory_bound_s(calls * groups * cast_b)
    return PassTimes(fwd_s=fwd_s, bwd_input_s=input_s, bwd_weight_s=weight_s, gemm_fwd_s=fwd_s)


def _flash(op: OpCost, fwd_flops: float, *, split: Split, hw: HardwareProfile, rates) -> PassTimes:
    """Fused attention on the work it really does: the traced (full s^2) FLOPs times the causal
    share, at the kernel's rate for this call length and head size; the backward does 2.5x the
    forward's products (FlashAttention-2 Sec. 3.1: dQ, dK, dV plus the recomputed scores)."""
    seq_q, seq_kv, head_dim = op.dims
    work = fwd_flops * causal_fraction(seq_q, seq_kv)
    peak = hw.peak_flops(_attention_precision(split))
    # load-balanced causal ring CP cuts the sequence into 2 x ring chunks (Megatron/TE, torch
    # head-tail): each ring step is a call on chunk-sized blocks; after a Ulysses all-to-all the
    # call covers the ring's whole share of the sequence (cost/context.py)
    ring = split.attention_calls
    call_seq = seq_kv / (2 * ring) if ring > 1 else seq_kv
    fwd_s = work / (peak * flash_rate(rates, seq_len=call_seq, head_dim=head_dim, backward=False))
    bwd_s = 2.5 * work / (peak * flash_rate(rates, seq_len=call_seq, head_dim=head_dim, backward=True))
    q_elements = fwd_flops / (4.0 * seq_kv)  # the traced full-s^2 forward: 4 x local Q x whole sequence
    merge_f, merge_b = _ring_merge_s(q_elements, split=split, hw=hw)
    if split.attention_unpads:  # the packing copies around a varlen call (kernels.unpad_bytes)
        pad_f, pad_b = unpad_bytes(q_elements, kv_ratio=split.kv_ratio)
        merge_f, merge_b = merge_f + hw.memory_bound_s(pad_f), merge_b + hw.memory_bound_s(pad_b)
    fwd_s, bwd_s = fwd_s + merge_f, bwd_s + merge_b
    return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)


def _ring_merge_s(q_elements: float, *, split: Split, hw: HardwareProfile) -> tuple[float, float]:
    """Memory-bound seconds (fwd, bwd) of ring CP's per-step merges on `q_elements` local Q elements:
    each step after the first merges its partial output (forward) and accumulates dQ, dK, dV (backward)."""
    steps = split.attention_calls - 1
    if steps <= 0:
        return 0.0, 0.0
    fp32 = split.ring_merge_fp32
    kv_elements = 2.0 * split.kv_ratio * q_elements
    fwd = hw.memory_bound_s(steps * RING_MERGE_BYTES_FWD[fp32] * q_elements)
    bwd = hw.memory_bound_s(steps * (RING_MERGE_BYTES_DQ[fp32] * q_elements + RING_MERGE_BYTES_DKV[fp32] * kv_elements))
    return fwd, bwd


def _eager_attention(fwd_flops: float, bwd_flops: float, *, split: Split, hw: HardwareProfile) -> PassTimes:
    """Two batched GEMMs (QK^T, AV) plus memory-bound passes over the score matrix."""
    if fwd_flops <= 0:
        return PassTimes()
    gemm = fwd_flops / 2
    rate = gemm / hw.matmul_s(gemm, precision=_attention_precision(split))
    fwd_s = fwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_FWD * split.score_elements)
    bwd_s = bwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_BWD * split.score_elements)
    return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)


def layer_times(ops: tuple[OpCost, ...], *, split: Split, hw: HardwareProfile, recomputed: bool,
                counts: OpCounts | None = None) -> PassTimes:
    """Sum of operator times and host time for one layer, plus what recompute replays before its
    backward, at the speed of one rank alone on its device (core sharing: cost/sharing.py)."""
    total = PassTimes()
    for op in ops:
        t = op_times(op, split=split, hw=hw)
        total = total + (t if op.count == 1 else t.scaled(op.count))  # ops.OpCost.count identical ops
    if hw.host is not None:
        total = _with_host(total, host_times(counts or OpCounts(), split=split, host=hw.host), hw.host)
    if not recomputed:
        return total
    match split.recompute:
        case Recompute.FULL:
            extra = total.fwd_s
        case Recompute.SELECTIVE if split.selective == SelectiveRecompute.OP_SAC:
            # torchtitan per-op SAC saves SDPA and every other matmul output, replays the rest
            extra = 0.5 * total.gemm_fwd_s + max(0.0, total.fwd_s - total.gemm_fwd_s - total.attention_fwd_s)
        case Recompute.SELECTIVE:
            extra = total.attention_fwd_s
        case Recompute.NONE:
            extra = 0.0
    return PassTimes(fwd_s=total.fwd_s, bwd_input_s=total.bwd_input_s, bwd_weight_s=total.bwd_weight_s,
                     recompute_s=extra, attention_fwd_s=total.attention_fwd_s, attention_bwd_s=total.attention_bwd_s,
                     gemm_fwd_s=total.gemm_fwd_s, host_excess_fwd_s=total.host_excess_fwd_s,
                     host_excess_bwd_s=total.host_excess_bwd_s)


def block_kind_times(graph: ModelGraph, *, split: Split, hw: HardwareProfile) -> dict[str, PassTimes]:
    """PassTimes of each block kind ("dense", "moe", "embedding", "head") for one micro-batch."""
    out = {}
    key = GraphKey(graph)
    counts = op_counts(key)
    for kind, ops in layer_ops(key, split.fusion != Fusion.EAGER).items():
        recomputed = kind not in (BlockKind.EMBEDDING, BlockKind.HEAD)
        out[kind] = layer_times(ops, split=split, hw=hw, recomputed=recomputed, counts=counts.get(kind))
    return out


def optimizer_s(num_params: float, *, state_bytes: float, grad_bytes: float, param_bytes: float,
                hw: HardwareProfile) -> float:
    """Adam-style update is memory bound: read grad + state, write state + low-precision weights."""
    traffic = num_params * (grad_bytes + 2 * state_bytes + param_bytes)
    return hw.memory_bound_s(traffic)


# -- host (framework) time per operator --------------------------------------------------------


def host_times(counts: OpCounts, *, split: Split, host: HostOverhead) -> PassTimes:
    """Host seconds of one layer for one micro-batch: per-op dispatch (fixed plus a part growing
    with the tokens each op touches) and, under TP, the DTensor cost of each sharded module.

    A stack with a measured per-op host cost (FrameworkRuntime.host_us_per_op) pays it instead of
    the launch model, the same in the backward (its modules' autograd functions replay the same
    Python per op); its expert ops cost host_us_per_expert_op once per local expert when its
    grouped GEMM launches one GEMM per expert (TE GroupedLinear)."""
    if split.cuda_graphs:  # replayed graphs launch no kernel from the host (NVIDIA CUDA Graphs blog, 2019)
        return PassTimes()
    per_expert_launch = split.gemm_streams > 0 or not split.grouped_gemm
    # a single-kernel grouped GEMM launches each expert op once for all of a rank's experts
    expert_ops = counts.expert_ops / (split.ep if per_expert_launch else split.experts_local * split.ep)
    if split.host_us_per_op is not None:
        us = counts.ops * split.host_us_per_op + expert_ops * (split.host_us_per_expert_op or split.host_us_per_op)
        return PassTimes(fwd_s=us * 1e-6, bwd_input_s=us * 1e-6)
    n = counts.ops + expert_ops
    ktokens = split.tokens / 1e3
    fwd_us = n * (host.fwd_us_per_op + host.fwd_us_per_op_per_ktoken * ktokens)
    bwd_us = n * (host.bwd_us_per_op + host.bwd_us_per_op_per_ktoken * ktokens)
    if split.tp > 1:
        fwd_us += counts.tp_modules * host.tp_fwd_us_per_module
        bwd_us += counts.tp_modules * host.tp_bwd_us_per_module
    return PassTimes(fwd_s=fwd_us * 1e-6, bwd_input_s=bwd_us * 1e-6)


def _with_host(kernels: PassTimes, host_t: PassTimes, host: HostOverhead) -> PassTimes:
    """CPU eager: the core runs the host work and the kernels in turn (their sum). Async device:
    the host enqueues ahead of the kernels, the layer takes the longer of the two."""
    if host.overlapped:
        fwd_s = max(kernels.fwd_s, host_t.fwd_s)
        bwd_total = kernels.bwd_input_s + kernels.bwd_weight_s
        extra_bwd = max(0.0, host_t.bwd_input_s - bwd_total)
        return PassTimes(fwd_s, kernels.bwd_input_s + extra_bwd, kernels.bwd_weight_s, kernels.recompute_s,
                         kernels.attention_fwd_s, kernels.attention_bwd_s,
                         host_excess_fwd_s=fwd_s - kernels.fwd_s, host_excess_bwd_s=extra_bwd)
    return kernels + host_t

