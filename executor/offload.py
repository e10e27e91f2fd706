"""Optimizer-state offload (ZeRO-Offload, Ren et al. 2021): fp32 master weights and optimizer
state live in a host pool; every step the gradients go device-to-host, the optimizer steps there,
and the updated weights come back host-to-device.

On a CUDA rank the pool is pinned host memory. On CPU the "device" is the host too, so the pool
is simply separate storage: the state still moves (it is never allocated beside the model's
parameters) and the bytes copied each way are counted, which the parity test checks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from planner.scenario import JobSpec


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class HostOptimizer:
    """The optimizer of `params` run on host copies of them."""

    def __init__(self, params: list[nn.Parameter], *, job: JobSpec, make) -> None:
        pin = torch.cuda.is_available()
        self.params = params
        self.host = [nn.Parameter(torch.empty(_local(p).shape, dtype=torch.float32, pin_memory=pin)) for p in params]
        with torch.no_grad():
            for h, p in zip(self.host, params):
                h.copy_(_local(p).detach())
        self.inner = make(self.host, job=job)
        self.d2h_bytes = self.h2d_bytes = 0  # cumulative

    @torch.no_grad()
    def step(self) -> None:
        for h, p in zip(self.host, self.params):
            if p.grad is None:
                h.grad = None
                continue
            grad = p.grad
            if isinstance(grad, DTensor) and grad.placements != p.placements:  # e.g. a Replicate() embedding grad
                grad = grad.redistribute(p.device_mesh, p.placements)
            h.grad = _local(grad).to("cpu", dtype=torch.float32, copy=True)
            self.d2h_bytes += h.grad.numel() * h.grad.element_size()
        self.inner.step()
        for h, p in zip(self.host, self.params):
            _local(p).copy_(h, non_blocking=h.is_pinned())
            self.h2d_bytes += h.numel() * _local(p).element_size()

    def state_bytes(self) -> int:
        """Bytes of the host pool: master weights and every optimizer state tensor."""
        states = [t for s in self.inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
        return sum(t.numel() * t.element_size() for t in self.host + states)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for s in self.inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
