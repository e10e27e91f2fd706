"""Host samples of all ranks -> HostOverhead: the host terms the cost model adds to its kernel times.

The samples are measured by host.py; this module only fits, against the cost model's own kernel
times (cost/), so that kernel and host time together reproduce the measured pass.
"""

from __future__ import annotations

import statistics

from planner.cost import GraphKey, estimate, layer_ops, layer_times, op_counts, split_for
from planner.graph import extract_graph
from planner.hardware import HardwareProfile, HostOverhead
from planner.plan import Plan
from planner.profiler.host import HostSamples, PassTiming
from planner.profiler.kernels import TORCH_DTYPES
from planner.scenario import JobSpec, ModelSpec, Precision, cluster_preset


# -- fitting: samples of all ranks -> HostOverhead ----------------------------------------------


def fit_host(samples: list[HostSamples], *, spec: ModelSpec, precision: Precision,
             kernels: HardwareProfile) -> HostOverhead:
    """Per-op host cost = (measured pass - the kernel model's time for it) / traced ops, split into
    a fixed part and a part per 1,000 tokens from the short and the long pass; medians over ranks.

    `kernels` is the profile built from the kernel sweep (no host term yet), so the split between
    kernel and host time is the cost model's own: the two together reproduce the measured pass.
    """
    short, long = (_median_pass([s.passes[i] for s in samples]) for i in range(2))
    (k1, n), (k2, _) = (_kernel_model(p.seq_len, spec=spec, precision=precision, kernels=kernels) for p in (short, long))
    f1, b1 = (short.fwd_s - k1[0]) / n * 1e6, (short.bwd_s - k1[1]) / n * 1e6
    f2, b2 = (long.fwd_s - k2[0]) / n * 1e6, (long.bwd_s - k2[1]) / n * 1e6
    span_kt = (long.seq_len - short.seq_len) / 1e3
    fwd_slope, bwd_slope = max(0.0, (f2 - f1) / span_kt), max(0.0, (b2 - b1) / span_kt)
    fwd_us, bwd_us = max(0.0, f1 - fwd_slope * short.seq_len / 1e3), max(0.0, b1 - bwd_slope * short.seq_len / 1e3)
    together = _median(t for s in samples for t in s.together_s)
    host = HostOverhead(
        fwd_us_per_op=fwd_us, bwd_us_per_op=bwd_us, fwd_us_per_op_per_ktoken=fwd_slope, bwd_us_per_op_per_ktoken=bwd_slope,
        tp_fwd_us_per_module=_median(s.dtensor_fwd_s for s in samples) * 1e6,
        tp_bwd_us_per_module=_median(s.dtensor_bwd_s for s in samples) * 1e6,
        tp_reduce_per_module=True, overlapped=False,
        shared_cores=_shared_cores(long.fwd_s + long.bwd_s, together, ranks=len(samples)),
        sync_wait_us=_median(s.sync_wait_s for s in samples) * 1e6)
    host = host.model_copy(update={"pipe_action_us": _pipe_action_us(samples, shared_cores=host.shared_cores)})
    tp_passes = [s.tp_pass_s for s in samples if s.tp_pass_s is not None]
    if not tp_passes:
        return host
    wait_us = _fit_sync_wait(max(tp_passes), spec=spec, precision=precision, seq_len=long.seq_len,
                             kernels=kernels.model_copy(update={"host": host}), ranks=len(samples))
    return host.model_copy(update={"sync_wait_us": wait_us})


def _fit_sync_wait(measured_s: float, *, spec: ModelSpec, precision: Precision, seq_len: int,
                 kernels: HardwareProfile, ranks: int) -> float:
    """Wait per collective that makes the model's step for the probe's plan (tp 2 x dp ranks/2,
    one sequence per pair, one node) match the TP pass measured on the slowest rank. The model
    is linear in the wait (each collective carries it once), so two estimates give the slope;
    gradient sync and the optimizer, which the probe does not run, are left out of the step."""
    graph = extract_graph(spec, seq_len=seq_len, batch=1, dtype=TORCH_DTYPES[precision])
    plan = Plan.model_validate({"dims": {"tp": 2, "dp": ranks // 2}})
    job = JobSpec(seq_len=seq_len, global_batch=ranks // 2, precision=precision)
    cluster = cluster_preset("cpu-local").model_copy(update={"gpus_per_node": ranks})

    def step_s(wait_us: float) -> float:
        host = kernels.host.model_copy(update={"sync_wait_us": wait_us})
        est = estimate(graph, plan, hw=kernels.model_copy(update={"host": host}), cluster=cluster, job=job)
        return est.step_time_s - est.time_breakdown_s["dp"] - est.time_breakdown_s["optimizer"]

    base_s, slope_s = step_s(0.0), step_s(1e3) - step_s(0.0)
    return max(0.0, (measured_s - base_s) / slope_s * 1e3) if slope_s > 0 else 0.0


def _pipe_action_us(samples: list[HostSamples], *, shared_cores: float | None) -> float:
    """Action time of the pipeline probe minus its compute at the shared speed: every rank is a
    stage doing the same work, so the node retires it at ranks / shared_cores x the solo compute
    per action (cost/sharing.py's capacity bound); what remains is per-action host time. Median
    over ranks, microseconds."""
    ranks = len(samples)
    slowdown = ranks / shared_cores if shared_cores is not None else 1.0
    return _median(max(0.0, s.pipe_action_s - slowdown * s.pipe_compute_s) for s in samples) * 1e6


def _shared_cores(solo_s: float, together_s: float, *, ranks: int) -> float | None:
    """Cores' worth of solo-speed progress the ranks make together (cost/sharing.py):
    ranks x solo / together; None when every rank runs at solo speed (no sharing to model)."""
    cores = ranks * solo_s / together_s
    return None if cores >= ranks else cores


def _median(values) -> float:
    return float(statistics.median(list(values)))


def _median_pass(passes: list[PassTiming]) -> PassTiming:
    return PassTiming(seq_len=passes[0].seq_len, fwd_s=_median(p.fwd_s for p in passes),
                      bwd_s=_median(p.bwd_s for p in passes))


def _kernel_model(seq_len: int, *, spec: ModelSpec, precision: Precision,
                  kernels: HardwareProfile) -> tuple[tuple[float, float], int]:
    """((forward s, backward s) the kernel model gives one sequence, traced ops dispatched)."""
    graph = extract_graph(spec, seq_len=seq_len, batch=1, dtype=TORCH_DTYPES[precision])
    plan = Plan.model_validate({"dims": {"dp": 1}})
    split = split_for(plan, graph=graph, precision=precision)
    key = GraphKey(graph)
    per_kind = {kind: layer_times(ops, split=split, hw=kernels, recomputed=False)
                for kind, ops in layer_ops(key).items()}
    counts = op_counts(key)
    fwd_s = bwd_s = 0.0
    n_ops = 0
    for layer in graph.layers:
        t = per_kind[layer.block_kind]
        fwd_s, bwd_s = fwd_s + t.fwd_s, bwd_s + t.bwd_input_s + t.bwd_weight_s
        n_ops += counts[layer.block_kind].ops + counts[layer.block_kind].expert_ops
    return (fwd_s, bwd_s), n_ops
