"""Per-layer extras of the long-context and memory mechanisms, as plain numbers for cost/__init__:
Zeppelin's moved tokens (sequences.py) and streamed offloaded parameters/activations (offload.py)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.compute import PassTimes
from planner.cost.memory import KindMemory
from planner.cost.offload import layer_stream_s
from planner.cost.sequences import SequenceLoads, moved_tokens_s
from planner.cost.terms import TimeTerm
from planner.graph import ModelGraph
from planner.hardware import GroupSpan, HardwareProfile
from planner.plan import Axis, Plan
from planner.scenario import HostSpec, JobSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerExtras:
    """One layer, one micro-batch: traffic per term and its exposed seconds, per pass."""

    fwd_comm_s: dict
    bwd_comm_s: dict
    fwd_exposed_s: float
    bwd_exposed_s: float


def layer_extras(plan: Plan, *, block: bool, mem: KindMemory, t: PassTimes, loads: SequenceLoads, graph: ModelGraph,
                 job: JobSpec, dp_span: GroupSpan, hw: HardwareProfile, host: HostSpec) -> LayerExtras | None:
    """None when the plan moves no tokens and streams nothing (no extras to add)."""
    moved = moved_tokens_s(plan, loads, graph=graph, job=job, span=dp_span, hw=hw) if block else 0.0
    stream, ef, eb = layer_stream_s(plan, mem, t, job=job, host=host)
    if not moved and not stream:
        return None
    comm = {Axis.DP: moved, TimeTerm.OFFLOAD: stream / 2}
    return LayerExtras(fwd_comm_s=comm, bwd_comm_s=comm, fwd_exposed_s=moved + ef, bwd_exposed_s=moved + eb)
