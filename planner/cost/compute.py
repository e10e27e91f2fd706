"""Per-layer compute time for each pass (forward, backward-input, backward-weight, recompute).

Operators come from the traced graph: each is split by the plan (tensor, sequence, context and
expert parallelism), scaled from the traced sample to the micro-batch, and timed on the
roofline of the hardware profile: GEMMs and attention at efficiency(FLOPs of one call), the rest
at achieved memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.ops import GraphKey, OpCost, Region, layer_ops
from planner.graph import ModelGraph, OpKind
from planner.hardware import HardwareProfile
from planner.plan import Plan, Recompute
from planner.scenario import Precision

# FlashAttention's backward recomputes the attention matrix: 5 GEMM-sized products instead of
# the 4 an autograd count reports (Dao 2023, FlashAttention-2, Sec. 3.1).
FLASH_BWD_FLOPS_FACTOR = 1.25
# A memory-bound op's backward reads the saved input and the output gradient and writes the
# input gradient: about twice the forward's traffic.
MEMORY_BOUND_BWD_BYTES_FACTOR = 2.0
# Eager (pre-FlashAttention) attention materialises the b*a*s^2 score matrix: bytes moved per
# score element. Forward: QK^T writes fp16 scores (2), fused scale-mask-softmax reads and writes
# (4), dropout reads, writes its output and a 1-byte mask (5), AV reads (2) = 13. Backward: the
# mirror image with gradients plus the saved softmax/mask re-read = 21 (Megatron-LM 2021-22 kernels,
# Korthikanti et al. 2022 Sec. 4.1 lists the same tensors).
EAGER_SCORE_BYTES_FWD = 13.0
EAGER_SCORE_BYTES_BWD = 21.0
# Dropless MoE: the busiest expert rank gets ~10% more tokens than the mean with an auxiliary
# balance loss (Switch Transformer, Fedus et al. 2021, Fig. 9; DeepSeek-V3 report Sec. 2.1.2).
DROPLESS_IMBALANCE = 1.10


@dataclass(frozen=True, slots=True)
class PassTimes:
    """Seconds for one micro-batch through one layer on one GPU."""

    fwd_s: float = 0.0
    bwd_input_s: float = 0.0
    bwd_weight_s: float = 0.0
    recompute_s: float = 0.0
    attention_fwd_s: float = 0.0  # the part CP ring traffic overlaps with
    attention_bwd_s: float = 0.0

    def __add__(self, other: PassTimes) -> PassTimes:
        return PassTimes(*(a + b for a, b in zip(self._tuple(), other._tuple(), strict=True)))

    def _tuple(self) -> tuple[float, ...]:
        return (self.fwd_s, self.bwd_input_s, self.bwd_weight_s, self.recompute_s,
                self.attention_fwd_s, self.attention_bwd_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    """How one micro-batch of one layer divides over a GPU: everything timing needs from the plan."""

    batch_scale: float  # micro-batch sequences / traced sequences
    tp: int
    cp: int
    ep: int
    sp: bool
    imbalance: float
    precision: Precision
    recompute: Recompute
    flash: bool  # fused attention; False = eager softmax over materialised scores
    score_elements: float  # attention scores per layer per micro-batch on one GPU (eager only)

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
        runs cp blocks.
        """
        if op.region == Region.EXPERT:
            return 1.0 / self.ep
        return float(self.cp) if op.kind == OpKind.ATTENTION else 1.0


def split_for(plan: Plan, *, graph: ModelGraph, precision: Precision, flash: bool = True) -> Split:
    d = plan.dims
    heads = graph.num_attention_heads / d.tp
    scores = plan.micro_batch_size * heads * graph.seq_len * graph.seq_len / d.cp
    moe = next((layer.moe for layer in graph.layers if layer.moe is not None), None)
    imbalance = DROPLESS_IMBALANCE
    if moe is not None and moe.capacity_factor is not None:
        imbalance = min(moe.capacity_factor, DROPLESS_IMBALANCE)
    return Split(batch_scale=plan.micro_batch_size / graph.sample_batch, tp=d.tp, cp=d.cp, ep=d.ep,
                 sp=plan.sequence_parallel, imbalance=imbalance,
                 precision=precision, recompute=plan.recompute, flash=flash, score_elements=scores)


def op_times(op: OpCost, *, split: Split, hw: HardwareProfile) -> PassTimes:
    share = split.work_share(op.region)
    fwd_flops, bwd_flops = op.fwd_flops * share, op.bwd_flops * share
    match op.kind:
        case OpKind.MATMUL | OpKind.EXPERT_MATMUL | OpKind.ROUTER:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            rate = per_call / hw.matmul_s(per_call, precision=split.precision)
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops / rate
            weight_share = op.bwd_weight_flops / op.bwd_flops if op.bwd_flops else 0.0
            return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s * (1 - weight_share), bwd_weight_s=bwd_s * weight_share)
        case OpKind.ATTENTION if split.flash:
            per_call = fwd_flops / split.calls(op)
            if per_call <= 0:
                return PassTimes()
            rate = per_call / hw.attention_s(per_call, precision=split.precision)
            fwd_s, bwd_s = fwd_flops / rate, bwd_flops * FLASH_BWD_FLOPS_FACTOR / rate
            return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)
        case OpKind.ATTENTION:
            return _eager_attention(fwd_flops, bwd_flops, split=split, hw=hw)
        case _:
            fwd_s = hw.memory_bound_s(op.bytes_moved * share)
            return PassTimes(fwd_s=fwd_s, bwd_input_s=fwd_s * MEMORY_BOUND_BWD_BYTES_FACTOR)


def _eager_attention(fwd_flops: float, bwd_flops: float, *, split: Split, hw: HardwareProfile) -> PassTimes:
    """Two batched GEMMs (QK^T, AV) plus memory-bound passes over the score matrix."""
    if fwd_flops <= 0:
        return PassTimes()
    gemm = fwd_flops / 2
    rate = gemm / hw.matmul_s(gemm, precision=split.precision)
    fwd_s = fwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_FWD * split.score_elements)
    bwd_s = bwd_flops / rate + hw.memory_bound_s(EAGER_SCORE_BYTES_BWD * split.score_elements)
    return PassTimes(fwd_s=fwd_s, bwd_input_s=bwd_s, attention_fwd_s=fwd_s, attention_bwd_s=bwd_s)


def layer_times(ops: tuple[OpCost, ...], *, split: Split, hw: HardwareProfile, recomputed: bool) -> PassTimes:
    """Sum of operator times for one layer, plus what recompute replays before its backward."""
    total = PassTimes()
    for op in ops:
        t = op_times(op, split=split, hw=hw)
        total = total + (t if op.count == 1 else PassTimes(*(x * op.count for x in t._tuple())))  # ops.OpCost.count
    if not recomputed:
        return total
    match split.recompute:
        case Recompute.FULL:
            extra = total.fwd_s
        case Recompute.SELECTIVE:
            extra = total.attention_fwd_s
        case Recompute.NONE:
            extra = 0.0
    return PassTimes(fwd_s=total.fwd_s, bwd_input_s=total.bwd_input_s, bwd_weight_s=total.bwd_weight_s,
                     recompute_s=extra, attention_fwd_s=total.attention_fwd_s, attention_bwd_s=total.attention_bwd_s)


def block_kind_times(graph: ModelGraph, *, split: Split, hw: HardwareProfile) -> dict[str, PassTimes]:
    """PassTimes of each block kind ("dense", "moe", "embedding", "head") for one micro-batch."""
    out = {}
    for kind, ops in layer_ops(GraphKey(graph)).items():
        recomputed = kind not in ("embedding", "head")
        out[kind] = layer_times(ops, split=split, hw=hw, recomputed=recomputed)
    return out


def optimizer_s(num_params: float, *, state_bytes: float, grad_bytes: float, param_bytes: float,
                hw: HardwareProfile) -> float:
    """Adam-style update is memory bound: read grad + state, write state + low-precision weights."""
    traffic = num_params * (grad_bytes + 2 * state_bytes + param_bytes)
    return hw.memory_bound_s(traffic)
