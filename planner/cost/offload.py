"""Offload: training state kept in host memory or NVMe, and the transfers that buys.

ZeRO-Offload (Ren et al. 2021, USENIX ATC, Sec. 4): fp32 optimizer states (and gradients) on
the host, the Adam step on the CPU (memory bound on host DRAM), gradients streamed device-to-host
during the backward, updated low-precision parameters host-to-device after the step.
ZeRO-Infinity (Rajbhandari et al. 2021, SC, Sec. 5): optimizer states on NVMe (read and written
every step), parameters on the host fetched per layer ahead of use and overlapped with compute.
Activation offload (the same idea as ZeRO-R's CPU checkpointing): a layer's saved tensors go to
the host in the forward and come back in the backward, overlapped with neighbouring layers.
Links: ClusterSpec.host (PCIe generation or NVLink-C2C per GPU per direction).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.fp8 import element_bytes
from planner.cost.terms import MemoryTerm
from planner.plan import OffloadState, OffloadTier, Plan
from planner.scenario import HostSpec, JobSpec

_GB = 1e9
_GIB = 2**30
# GPU staging kept per offloaded state: two buffers (one filling, one draining), each this many
# parameters (DeepSpeed's default offload bucket, reduce_bucket_size = 5e8 elements, is larger;
# we take the pinned double buffer of 5e7 elements, DeepSpeed's sub_group_size order).
STAGING_PARAMS = 5e7
STAGING_BUFFERS = 2
# Reading and writing m, v and fp32 master per parameter, plus the gradient and the new weight:
# the CPU Adam pass is memory bound on host DRAM (DeepSpeed CPU-Adam, Ren et al. 2021 Sec. 5.1).
_STATE_RW = 2


def tier_gbs(tier: OffloadTier, host: HostSpec) -> float:
    match tier:
        case OffloadTier.HOST:
            return host.link_gbs
        case OffloadTier.NVME:
            return min(host.link_gbs, host.nvme_gbs)


def gpu_state_terms(terms: dict[str, float], plan: Plan, *, largest_layer_bytes: float) -> dict[str, float]:
    """Memory terms with offloaded states moved off the GPU; a staging term for what streams."""
    if not plan.offload:
        return terms
    out = dict(terms)
    staging = 0.0
    names = {OffloadState.OPTIMIZER: MemoryTerm.OPTIMIZER, OffloadState.GRADIENTS: MemoryTerm.GRADIENTS,
             OffloadState.PARAMETERS: MemoryTerm.WEIGHTS}
    for state, name in names.items():
        if state in plan.offload and name in out:
            moved = out[name]
            out[name] = 0.0
            if state == OffloadState.PARAMETERS:
                staging += min(moved, STAGING_BUFFERS * largest_layer_bytes)  # current + prefetched layer
            elif state == OffloadState.GRADIENTS:
                staging += min(moved, STAGING_BUFFERS * STAGING_PARAMS * 4)
    out[MemoryTerm.OFFLOAD_STAGING] = staging
    return out


def offloaded_bytes(terms: dict[str, float], plan: Plan) -> dict[OffloadTier, float]:
    """Bytes per GPU each offload tier holds (from the states' on-GPU sizes before offload)."""
    names = {OffloadState.OPTIMIZER: MemoryTerm.OPTIMIZER, OffloadState.GRADIENTS: MemoryTerm.GRADIENTS,
             OffloadState.PARAMETERS: MemoryTerm.WEIGHTS, OffloadState.ACTIVATIONS: MemoryTerm.ACTIVATIONS}
    out: dict[OffloadTier, float] = {}
    for state, tier in plan.offload.items():
        out[tier] = out.get(tier, 0.0) + terms.get(names[state], 0.0)
    return out


def fits_host(held: dict[str, float], host: HostSpec) -> bool:
    """Whether the offloaded bytes per GPU fit the host DRAM and NVMe shares of one GPU."""
    return held.get(OffloadTier.HOST.value, 0.0) <= host.memory_gib * _GIB and \
        held.get(OffloadTier.NVME.value, 0.0) <= host.nvme_gib * _GIB


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadStep:
    """Per step after the backward: CPU optimizer and transfers (exposed), and what overlapped."""

    exposed_s: float
    total_s: float


def optimizer_step(plan: Plan, *, local_params: float, job: JobSpec, host: HostSpec, bwd_window_s: float,
                   gpu_optimizer_s: float) -> OffloadStep:
    """The step's optimizer with offloaded states; falls back to the GPU step without them.

    Gradients go to the host during the last micro-batch's backward (hidden up to that window),
    the CPU runs Adam at host DRAM bandwidth, NVMe states are read and written, and the updated
    parameters come back (exposed: the next forward needs them).
    """
    tier = plan.offload.get(OffloadState.OPTIMIZER)
    if tier is None:
        return OffloadStep(exposed_s=gpu_optimizer_s, total_s=gpu_optimizer_s)
    opt = job.optimizer
    grads_s = local_params * opt.grad_bytes_per_param / (host.link_gbs * _GB)
    cpu_s = local_params * (opt.grad_bytes_per_param + _STATE_RW * opt.state_bytes + element_bytes(plan, job=job)) / (
        host.memory_bandwidth_gbs * _GB)
    nvme_s = 0.0
    if tier == OffloadTier.NVME:
        nvme_s = _STATE_RW * local_params * opt.state_bytes / (host.nvme_gbs * _GB)
    params_s = local_params * element_bytes(plan, job=job) / (host.link_gbs * _GB)
    exposed = max(0.0, grads_s - bwd_window_s) + cpu_s + nvme_s + params_s
    return OffloadStep(exposed_s=exposed, total_s=grads_s + cpu_s + nvme_s + params_s)


def layer_stream_s(plan: Plan, mem, t, *, job: JobSpec, host: HostSpec) -> tuple[float, float, float]:
    """(total, exposed fwd, exposed bwd) seconds of one layer's offloaded parameters and activations
    for one micro-batch (`mem` a memory.KindMemory, `t` its compute.PassTimes): parameters fetched
    for the forward and again for the backward, activations out in the forward and back in the
    backward, each prefetched behind the layer's compute."""
    fwd = bwd = 0.0
    if (tier := plan.offload.get(OffloadState.PARAMETERS)) is not None:
        fetch = (mem.dense_params + mem.expert_params) * element_bytes(plan, job=job) / (tier_gbs(tier, host) * _GB)
        fwd, bwd = fwd + fetch, bwd + fetch
    if (tier := plan.offload.get(OffloadState.ACTIVATIONS)) is not None:
        move = mem.act_bytes / (tier_gbs(tier, host) * _GB)
        fwd, bwd = fwd + move, bwd + move
    bwd_window = t.bwd_input_s + t.bwd_weight_s + t.recompute_s
    return fwd + bwd, max(0.0, fwd - t.fwd_s), max(0.0, bwd - bwd_window)
