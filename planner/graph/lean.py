"""Building and tracing the canonical model on meta without importing torch._dynamo.

Nothing here changes a traced op: it only skips work whose result a meta tensor cannot hold.
torch wraps its Python meta kernels (torch._refs, torch._decomp, the meta kernels of nn.init's
normal_/uniform_) and every TorchDispatchMode.__torch_dispatch__ in `torch._disable_dynamo`
(torch/_compile.py), which imports torch._dynamo on its first call: ~0.6-0.8 s, as long as
`import torch` again, for a guard that matters only while torch.compile is tracing, which the
planner's tracer never does. The wrapper caches `fn.__dynamo_disable`; while `no_dynamo_import()`
is active that cache holds `fn` itself (what torch._dynamo.disable returns in effect when no
frame is being compiled) and it is cleared again on exit. If torch's internals differ (another
version), nothing is patched and torch imports torch._dynamo as before: slower, never wrong.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_CACHE_ATTR = "__dynamo_disable"  # torch/_compile.py: _disable_dynamo's per-function cache
_INIT_FNS = frozenset(getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_"))


class SkipMetaInit(TorchFunctionMode):
    """Skips torch.nn.init on meta tensors while a model is built: they hold no data, so an init
    is a no-op there, yet its meta kernels run ~0.2 s of Python for a 70B model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INIT_FNS:
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def _wrapped_functions() -> list[types.FunctionType]:
    """Every function torch has wrapped with `_disable_dynamo` so far ([] if torch's wrapper has
    another shape). The wrappers are closures spread over decomposition tables and op kernels;
    the functions running the wrapper's code object are the one handle on all of them (~25 ms)."""
    code = torch._compile._disable_dynamo(_wrapped_functions).__code__
    if "fn" not in code.co_freevars:
        return []
    slot = code.co_freevars.index("fn")
    return [f.__closure__[slot].cell_contents for f in gc.get_referrers(code)
            if type(f) is types.FunctionType and f.__code__ is code]


@contextmanager
def no_dynamo_import() -> Iterator[None]:
    """Within the block, torch's `_disable_dynamo` wrappers call their function directly."""
    if "torch._dynamo" in sys.modules:  # already paid for (or compiling): keep torch's own path
        yield
        return
    fresh = [f for f in _wrapped_functions() if isinstance(f, types.FunctionType) and _CACHE_ATTR not in vars(f)]
    for f in fresh:
        setattr(f, _CACHE_ATTR, f)
    try:
        yield
    finally:
        for f in fresh:
            vars(f).pop(_CACHE_ATTR, None)
