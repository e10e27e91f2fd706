"""Records every aten op of a forward pass on the meta device: FLOPs, bytes, owner module, saves.

Three mechanisms cooperate, none of which needs real data:
- a TorchDispatchMode sees each aten op with its (meta) inputs and outputs; FLOPs of GEMM-like
  ops come from torch.utils.flop_counter's formulas, backward FLOPs from which operands need a
  gradient (dX and dW each cost one forward GEMM: Narayanan et al. 2021, Sec. 5.1);
- module hooks keep the owning module's FQN;
- saved_tensors_hooks see exactly what autograd keeps for backward (the activation memory).
On meta, PyTorch picks reference decompositions that differ from the GPU kernels in what they
keep (fp32 upcasts in SDPA, float dropout masks, decomposed RMSNorm), so a TorchFunctionMode runs
GPU-equivalent versions of dropout (1-byte mask), RMSNorm (saves x and rstd) and attention
(Megatron's unfused attention in the input dtype: the "eager" accounting of Korthikanti 2022).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

_GEMM = {"mm", "addmm", "bmm", "baddbmm"}
_NO_FLOP = {
    "_to_copy", "clone", "copy_", "cat", "stack", "index", "index_select", "gather", "scatter", "scatter_add",
    "index_put", "index_put_", "index_add", "index_add_", "embedding", "empty", "empty_like", "empty_strided",
    "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange", "scalar_tensor", "fill_",
    "new_zeros", "new_empty", "new_ones", "new_full", "repeat", "repeat_interleave", "constant_pad_nd",
    "topk", "sort", "argsort", "bincount", "histc", "one_hot", "nonzero", "masked_select", "lift_fresh",
    "_local_scalar_dense", "bernoulli_", "uniform_", "normal_", "random_", "tril", "triu", "where",
    "_unsafe_index", "index_copy", "masked_scatter", "flip", "roll", "contiguous", "_index_put_impl_",
    "argmax", "max", "min", "all", "any", "floor_divide", "remainder", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "bitwise_not",
}
_COMPUTE = {
    "softmax", "_softmax", "_safe_softmax", "_log_softmax", "log_softmax", "native_layer_norm",
    "native_dropout", "sum", "mean", "var", "var_mean", "amax", "amin", "cumsum", "cumprod", "nll_loss_forward",
    "nll_loss2d_forward", "logsumexp", "norm", "linalg_vector_norm", "prod", "std", "_fused_rms_norm",
}
MATMUL_OPS = _GEMM | {"_grouped_mm", "grouped_mm_fallback", "grouped_mm", "convolution", "_convolution"}


@dataclass(slots=True, kw_only=True)
class OpRecord:
    """One recorded op while tracing (mutable; graph.py freezes it into an OpNode)."""

    index: int
    op: str  # packet name, e.g. "addmm"
    target: str
    module: str
    module_types: tuple[str, ...]  # class names of the enclosing modules, outermost first
    in_attention: bool
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    dtype: str
    fwd_flops: float
    bwd_flops: float
    bwd_weight_flops: float
    bytes_read: float
    bytes_written: float
    param_bytes: float
    has_param: bool
    estimated: bool
    in_keys: tuple[int, ...] = ()  # storages read
    preds: list[int] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class SavedStorage:
    """One storage autograd keeps for backward, with who made it and who kept it."""

    nbytes: float
    producer: int | None  # record index, None for a tensor made outside the trace
    module: str  # module path active when autograd saved it
    position: int  # number of records at save time (orders saves against ops)


@dataclass(slots=True)
class Trace:
    records: list[OpRecord]
    saved: dict[int, SavedStorage]  # storage key -> info
    consumers: dict[int, list[int]]  # storage key -> record indices reading it
    producer: dict[int, int]  # storage key -> record index that created it
    storage_bytes: dict[int, float]  # storage key -> bytes, for storages created in the trace
    output_keys: list[int]
    warnings: list[str]


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def is_matmul(op: str) -> bool:
    return op in MATMUL_OPS or "grouped_mm" in op and "backward" not in op


class _Recorder(TorchDispatchMode):
    """Turns each aten op into an OpRecord; alias ops (views) only forward their storage."""

    def __init__(self, *, param_keys: set[int], modules: list[tuple[str, str]], attention: list[bool]) -> None:
        super().__init__()
        self.param_keys, self.modules, self.attention = param_keys, modules, attention
        self.records: list[OpRecord] = []
        self.producer: dict[int, int] = {}
        self.last_writer: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        self.storage_bytes: dict[int, float] = {}
        self.keep: list[torch.Tensor] = []  # keeps storages alive so their keys stay unique
        self.warnings: list[str] = []

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """False: the recorder never runs under torch.compile, and torch's default wraps
        __torch_dispatch__ in torch._dynamo.disable, importing torch._dynamo (graph/lean.py)."""
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out, estimated = self._run(func, args, kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        in_keys = {storage_key(t) for t in inputs}
        if not func._schema.is_mutable and outputs and all(storage_key(t) in in_keys for t in outputs):
            return out  # a view / alias: same storage, nothing computed
        self._record(func, (args, kwargs, out), inputs, outputs, estimated)
        return out

    def _run(self, func, args, kwargs) -> tuple[Any, bool]:
        try:
            return func(*args, **kwargs), False
        except (NotImplementedError, RuntimeError) as err:
            return self._estimate(func, args, err), True

    def _estimate(self, func, args, err: Exception) -> Any:
        """An op the meta device cannot run: guess the output from the first input's shape."""
        first = next((a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)), None)
        if func.overloadpacket.__name__ == "_local_scalar_dense":  # .item() / bool(): no data on meta
            self._warn(f"{func}: a data-dependent branch read a meta tensor; assumed 1 / True")
            return True if first.dtype == torch.bool else 1
        returns = func._schema.returns
        if first is None or len(returns) != 1 or str(returns[0].type) != "Tensor":
            raise ValueError(f"cannot trace {func} on the meta device ({str(err).splitlines()[0]})") from None
        self._warn(f"{func}: no meta kernel ({str(err).splitlines()[0][:80]}); output estimated as the input shape")
        if "grouped_mm" in func.overloadpacket.__name__:  # x [S, K] by weights [G, K, N] -> [S, N]
            return torch.empty(first.shape[0], args[1].shape[-1], dtype=first.dtype, device="meta")
        if func.overloadpacket.__name__ == "nonzero":
            return torch.empty(first.numel(), first.dim(), dtype=torch.long, device="meta")
        return torch.empty_like(first)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            warnings.warn(f"planner graph: {message}", stacklevel=4)

    def _record(self, func, call: tuple, inputs: list[torch.Tensor], outputs: list[torch.Tensor],
                estimated: bool) -> None:
        op = func.overloadpacket.__name__
        index = len(self.records)
        grads = [t.requires_grad for t in inputs]
        fwd, bwd, bwd_w = self._flops(func, op, call, inputs, outputs, grads)
        params = [t for t in inputs if storage_key(t) in self.param_keys]
        known = is_matmul(op) or op in _NO_FLOP or op in _COMPUTE or torch.Tag.pointwise in func.tags
        if not known:
            self._warn(f"{func} is not in the op tables; FLOPs estimated as one per output element")
        rec = OpRecord(
            index=index, op=op, target=str(func), module=self.modules[-1][0] if self.modules else "",
            module_types=tuple(m[1] for m in self.modules), in_attention=self.attention[-1],
            input_shapes=tuple(tuple(t.shape) for t in inputs), output_shapes=tuple(tuple(t.shape) for t in outputs),
            dtype=str(next((t.dtype for t in outputs if t.is_floating_point()), (outputs or inputs)[0].dtype)).removeprefix("torch."),
            fwd_flops=fwd, bwd_flops=bwd, bwd_weight_flops=bwd_w,
            bytes_read=float(sum(_nbytes(t) for t in inputs)), bytes_written=float(sum(_nbytes(t) for t in outputs)),
            param_bytes=float(sum(_nbytes(t) for t in params)), has_param=bool(params),
            estimated=estimated or not known,
        )
        self._link(rec, inputs, outputs, func._schema.is_mutable)
        self.records.append(rec)

    def _link(self, rec: OpRecord, inputs: list[torch.Tensor], outputs: list[torch.Tensor], mutable: bool) -> None:
        rec.in_keys = tuple(storage_key(t) for t in inputs)
        for key in rec.in_keys:
            self.consumers.setdefault(key, []).append(rec.index)
            if key in self.last_writer and self.last_writer[key] not in rec.preds:
                rec.preds.append(self.last_writer[key])
        for t in outputs:
            key = storage_key(t)
            self.producer.setdefault(key, rec.index)
            self.storage_bytes.setdefault(key, float(t.untyped_storage().nbytes()))
            self.last_writer[key] = rec.index
        if not mutable:
            self.keep.extend(outputs)

    def _flops(self, func, op: str, call: tuple, inputs, outputs, grads: list[bool]) -> tuple[float, float, float]:
        """(forward, backward, backward-weight) FLOPs; GEMMs exact, others one per element."""
        if is_matmul(op):
            fwd = _gemm_flops(func, call, inputs, outputs)
            operands = inputs[-2:] if op in ("addmm", "baddbmm") else inputs[:2]
            bwd = bwd_w = 0.0
            for t in operands:
                if t.requires_grad:
                    bwd += fwd
                    bwd_w += fwd if storage_key(t) in self.param_keys else 0.0
            return fwd, bwd, bwd_w
        if op in _NO_FLOP or not outputs:
            return 0.0, 0.0, 0.0
        fwd = float(max([t.numel() for t in outputs] + [t.numel() for t in inputs if op in _COMPUTE]))
        return fwd, (2.0 * fwd if any(grads) else 0.0), 0.0



def _gemm_flops(func, call: tuple, inputs, outputs) -> float:
    """torch's own FLOP formulas (torch.utils.flop_counter) where it has one."""
    if func.overloadpacket in flop_registry:
        args, kwargs, out = call
        return float(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
    # grouped GEMM: x [S, K] by per-group weights [G, K, N] -> [S, N], each row in one group
    return 2.0 * outputs[0].numel() * inputs[0].shape[-1]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _FusedRMSNorm(torch.autograd.Function):
    """RMSNorm that keeps x and rstd for backward, as the fused GPU kernels do."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd)
        out = (x.float() * rstd).to(x.dtype)
        return out * weight if weight is not None else out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - tracing never runs backward
        raise NotImplementedError("trace-only RMSNorm")


def reference_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Unfused attention in the input dtype (Megatron's core attention), GQA heads expanded."""
    if k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        sq, sk = q.shape[-2], k.shape[-2]
        scores = scores + torch.full((sq, sk), float("-inf"), dtype=q.dtype, device=q.device).triu(sk - sq + 1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = scores.softmax(dim=-1)
    if dropout_p > 0:
        probs = torch.ops.aten.native_dropout(probs, dropout_p, True)[0]
    return probs @ v


class _GpuKernels(TorchFunctionMode):
    """Swaps three functions for their GPU-kernel equivalents and marks the attention region."""

    def __init__(self, attention: list[bool]) -> None:
        super().__init__()
        self.attention = attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.attention.append(True)
            try:
                return reference_attention(*args, **kwargs)
            finally:
                self.attention.pop()
        if func is F.dropout:
            return _dropout(*args, **kwargs)
        if func is F.rms_norm:
            return _rms_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _dropout(x, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return x
    return torch.ops.aten.native_dropout(x, p, True)[0]


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return _FusedRMSNorm.apply(x, weight, eps)


def trace_fn(root: nn.Module, fn: Callable[[], Any]) -> Trace:
    """Run fn() (a forward pass over root's meta tensors) and record every op and every save."""
    param_keys = {storage_key(t) for t in list(root.parameters()) + list(root.buffers())}
    modules: list[tuple[str, str]] = []
    attention = [False]
    recorder = _Recorder(param_keys=param_keys, modules=modules, attention=attention)
    saved: dict[int, SavedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in param_keys and key not in saved:
            module = modules[-1][0] if modules else ""
            saved[key] = SavedStorage(nbytes=float(t.untyped_storage().nbytes()), producer=recorder.producer.get(key),
                                      module=module, position=len(recorder.records))
            recorder.keep.append(t)
        return t

    handles = _module_hooks(root, modules, attention)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _GpuKernels(attention), recorder:
            out = fn()
    finally:
        for h in handles:
            h.remove()
    output_keys = [storage_key(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return Trace(recorder.records, saved, recorder.consumers, recorder.producer, recorder.storage_bytes,
                 output_keys, recorder.warnings)


def _module_hooks(root: nn.Module, modules: list[tuple[str, str]], attention: list[bool]) -> list:
    """Global pre/post forward hooks keeping the stack of (FQN, class name); `*.core` is attention.
    Two global hooks, not two per module: a 70B model has ~1,700 modules and registering hooks
    on each cost ~0.1 s per traced piece (torch.utils.hooks.RemovableHandle)."""
    names: dict[int, tuple[str, str, bool]] = {}
    for name, module in root.named_modules():
        names.setdefault(id(module), (name, type(module).__name__, name.endswith(".core") or name == "core"))

    def pre(module, _args):
        if (entry := names.get(id(module))) is not None:
            modules.append(entry[:2])
            attention.append(attention[-1] or entry[2])

    def post(module, _args, _out):
        if id(module) in names:
            modules.pop()
            attention.pop()

    return [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
