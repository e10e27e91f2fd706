"""Where each parallel group of a plan runs: its physical ranks (the rank grid after the plan's
device mapping) and, per pipeline stage, the links its groups cross (hardware.axis_spans).

Group-aware pricing: a stage's collectives are timed on the NICs, node pairs and fabric tiers of
that stage's own groups, not on the slowest NIC of the cluster; each pipeline boundary on the
link between its two stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.cost.comm import Spans, pp_p2p_s
from planner.graph import ModelGraph
from planner.hardware import GroupSpan, IdentityKey, axis_spans
from planner.plan import DEFAULT_EXPERT_RANK_ORDER, Axis, ParallelDims, Plan, device_grid
from planner.hardware import Collective, HardwareProfile, group_collective_s
from planner.scenario import ClusterSpec, JobSpec


@dataclass(frozen=True, slots=True)
class Placement:
    """Spans of every pipeline stage (`pp` of stage s: its boundary to stage s+1) and of the world;
    `stage_group`: the node group (GPU type) whose GPUs set each stage's pace (the slowest it spans)."""

    stages: tuple[Spans, ...]
    boundaries: tuple[GroupSpan, ...]
    world: GroupSpan
    stage_group: tuple[int, ...]
    stage_class: tuple[int, ...]  # per stage, the first stage with the same spans and GPU type



def plan_placement(plan: Plan, cluster: ClusterSpec) -> Placement:
    """The plan's groups on the cluster, memoised by layout, orders, mapping and the Ulysses degree
    (the only knob that moves groups: it splits the CP axis into all-to-all and ring groups)."""
    mapping = None if plan.device_mapping is None else tuple(plan.device_mapping)
    return _placement(plan.dims, tuple(plan.rank_order), tuple(plan.expert_rank_order), mapping,
                      plan.ulysses_degree(), IdentityKey(cluster))


@lru_cache(maxsize=512)
def _placement(dims: ParallelDims, order: tuple[Axis, ...], expert_order: tuple[Axis, ...],
               mapping: tuple[tuple[int, int], ...] | None, ulysses: int, cluster_key: IdentityKey) -> Placement:
    attention = ParallelDims(dp=dims.dp, tp=dims.tp, pp=dims.pp, cp=dims.cp)
    tp, cp, dp, boundaries, world, stage_group = _attention(attention, order, mapping, cluster_key)
    if ulysses == 1:  # a ring over all of cp (or no CP)
        ring, a2a = cp, _one_rank(dims.pp)
    elif ulysses == dims.cp:  # Ulysses over all of cp
        ring, a2a = _one_rank(dims.pp), cp
    else:
        ring, a2a = _cp_split(attention, order, mapping, ulysses, cluster_key)
    ep, etp, edp = _expert(dims, order, expert_order, mapping, cluster_key)
    stages = tuple(Spans(tp=tp[s], cp=cp[s], dp=dp[s], pp=boundaries[min(s, len(boundaries) - 1)], ep=ep[s],
                         etp=etp[s], edp=edp[s], cp_ring=ring[s], cp_a2a=a2a[s]) for s in range(dims.pp))
    first: dict[tuple[Spans, int], int] = {}
    classes = tuple(first.setdefault((spans, g), s) for s, (spans, g) in enumerate(zip(stages, stage_group, strict=True)))
    return Placement(stages=stages, boundaries=boundaries, world=world, stage_group=stage_group, stage_class=classes)


def _one_rank(num_stages: int) -> list[GroupSpan]:
    return [GroupSpan(num_ranks=1, stride=1, ranks_per_domain=1)] * num_stages


@lru_cache(maxsize=64)
def _setup(dims: ParallelDims, order: tuple[Axis, ...], expert_order: tuple[Axis, ...],
           mapping: tuple[tuple[int, int], ...] | None):
    """The rank grid, its ranks by stage and each rank's stage: memoised, since _attention,
    _cp_split and (for a dense model, whose expert grid is the attention one) _expert build the
    same one. The arrays are read-only: they are shared."""
    plan = Plan(dims=dims, rank_order=list(order), expert_rank_order=list(expert_order),
                device_mapping=None if mapping is None else list(mapping))
    grid = device_grid(plan)
    by_stage = np.moveaxis(grid.attention, order.index(Axis.PP), 0).reshape(dims.pp, -1)
    stage_of = np.empty(dims.world_size, dtype=np.int64)
    stage_of[by_stage] = _ids(dims.pp)[:, None]
    by_stage.flags.writeable = stage_of.flags.writeable = False
    return grid, by_stage, stage_of


def _spans(cluster: ClusterSpec, grid, stage_of: np.ndarray, num_stages: int, *axes: Axis) -> list[GroupSpan]:
    array, names = grid.grid_of(axes[0])
    pos = sorted(names.index(a) for a in axes)  # outer first: rows come out ascending when unmapped
    width = int(np.prod([array.shape[p] for p in pos]))
    members = np.moveaxis(array, pos, list(range(-len(pos), 0))).reshape(-1, width)
    return _axis_spans(cluster, members, stage_of=stage_of[members[:, 0]], num_stages=num_stages)


_SPANS: dict[tuple, tuple[GroupSpan, ...]] = {}
_SPANS_KEPT = 4096  # entries before the memo is cleared (a 405B search makes ~700 distinct)


def _axis_spans(cluster: ClusterSpec, members: np.ndarray, *, stage_of: np.ndarray | None = None,
                num_stages: int = 1) -> list[GroupSpan]:
    """hardware.axis_spans memoised by the cluster's identity and the groups' contents: layouts
    that differ in dp or pp often lay an axis's groups on the very same ranks and stages (a 405B
    search asks 2,372 times for 674 distinct ones). Keyed by a SHA-256 digest of the member and
    stage arrays, so the memo holds no rank arrays."""
    narrow = np.int32 if cluster.world_size < 2**31 else np.int64  # half the bytes to hash
    digest = hashlib.sha256(members.astype(narrow).tobytes())  # SHA-256: hardware-accelerated on x86 and ARM
    if stage_of is not None:
        digest.update(stage_of.astype(narrow).tobytes())
    key = (IdentityKey(cluster), members.shape, members.dtype.str, stage_of is None, num_stages, digest.digest())
    if key not in _SPANS:
        if len(_SPANS) >= _SPANS_KEPT:
            _SPANS.clear()
        _SPANS[key] = tuple(axis_spans(cluster, members, stage_of=stage_of, num_stages=num_stages))
    return list(_SPANS[key])


@lru_cache(maxsize=512)
def _attention(dims: ParallelDims, order: tuple[Axis, ...], mapping: tuple[tuple[int, int], ...] | None,
               cluster_key: IdentityKey) -> tuple:
    """tp, cp, dp x cp spans per stage, the pipeline boundaries and the world: shared by every
    expert folding of one attention layout."""
    cluster: ClusterSpec = cluster_key.obj
    grid, by_stage, stage_of = _setup(dims, order, tuple(DEFAULT_EXPERT_RANK_ORDER), mapping)
    spans = [_spans(cluster, grid, stage_of, dims.pp, *axes) for axes in ((Axis.TP,), (Axis.CP,), (Axis.CP, Axis.DP))]
    world = _axis_spans(cluster, np.sort(grid.attention.ravel())[None, :])[0]
    return (*spans, _boundaries(cluster, by_stage), world, _stage_groups(cluster, by_stage))


def pipeline_span(plan: Plan, cluster: ClusterSpec) -> GroupSpan:
    """A whole pipeline group (every stage): where the vocabulary-parallel collectives run (vocab.py);
    priced only for plans that use it."""
    d = plan.dims
    mapping = None if plan.device_mapping is None else tuple(plan.device_mapping)
    return _pipeline(ParallelDims(dp=d.dp, tp=d.tp, pp=d.pp, cp=d.cp), tuple(plan.rank_order), mapping,
                     IdentityKey(cluster))


@lru_cache(maxsize=64)
def _pipeline(dims: ParallelDims, order: tuple[Axis, ...], mapping: tuple[tuple[int, int], ...] | None,
              cluster_key: IdentityKey) -> GroupSpan:
    grid, _, stage_of = _setup(dims, order, tuple(DEFAULT_EXPERT_RANK_ORDER), mapping)
    return _spans(cluster_key.obj, grid, np.zeros_like(stage_of), 1, Axis.PP)[0]


@lru_cache(maxsize=512)
def _cp_split(dims: ParallelDims, order: tuple[Axis, ...], mapping: tuple[tuple[int, int], ...] | None, ulysses: int,
              cluster_key: IdentityKey) -> tuple[list[GroupSpan], list[GroupSpan]]:
    """Hybrid CP's ring and all-to-all spans per stage: each CP group (in CP order) splits into
    runs of `ulysses` consecutive ranks (all-to-all) and every `ulysses`-th rank (ring), as the
    executor builds them (executor/ulysses.hybrid_groups)."""
    cluster: ClusterSpec = cluster_key.obj
    grid, _, stage_of = _setup(dims, order, tuple(DEFAULT_EXPERT_RANK_ORDER), mapping)
    array, names = grid.grid_of(Axis.CP)
    cp_groups = np.moveaxis(array, names.index(Axis.CP), -1).reshape(-1, dims.cp // ulysses, ulysses)
    a2a = cp_groups.reshape(-1, ulysses)
    ring = np.swapaxes(cp_groups, 1, 2).reshape(-1, dims.cp // ulysses)
    return (_axis_spans(cluster, ring, stage_of=stage_of[ring[:, 0]], num_stages=dims.pp),
            _axis_spans(cluster, a2a, stage_of=stage_of[a2a[:, 0]], num_stages=dims.pp))


def _stage_groups(cluster: ClusterSpec, by_stage: np.ndarray) -> tuple[int, ...]:
    """Per stage, the node group of its slowest GPU (lockstep tensor/data parallelism waits for it)."""
    if cluster.node_groups is None:
        return (0,) * by_stage.shape[0]
    group_of = np.asarray(cluster.node_group_of())[by_stage // cluster.gpus_per_node]
    speed = [g.gpu.peak_tflops["bf16"] for g in cluster.node_groups]
    return tuple(min(set(row.tolist()), key=lambda g: (speed[g], g)) for row in group_of)


@lru_cache(maxsize=512)
def _expert(dims: ParallelDims, order: tuple[Axis, ...], expert_order: tuple[Axis, ...],
            mapping: tuple[tuple[int, int], ...] | None, cluster_key: IdentityKey) -> tuple:
    cluster: ClusterSpec = cluster_key.obj
    grid, _, stage_of = _setup(dims, order, expert_order, mapping)
    return tuple(_spans(cluster, grid, stage_of, dims.pp, axis) for axis in (Axis.EP, Axis.ETP, Axis.EDP))


def _ids(n: int) -> np.ndarray:
    """Stage (or boundary) numbers 0..n-1."""
    return np.fromiter(range(n), dtype=np.int64, count=n)


def _boundaries(cluster: ClusterSpec, by_stage: np.ndarray) -> tuple[GroupSpan, ...]:
    """The link of each pipeline boundary s -> s+1: all its rank pairs at once (they send together)."""
    pp = by_stage.shape[0]
    if pp == 1:
        return (GroupSpan(num_ranks=1, stride=1, ranks_per_domain=1),)
    pairs = np.stack([by_stage[:-1], by_stage[1:]], axis=-1).reshape(-1, 2)
    boundary = np.repeat(_ids(pp - 1), by_stage.shape[1])
    return tuple(_axis_spans(cluster, pairs, stage_of=boundary, num_stages=pp - 1))


def boundary_p2p_s(plan: Plan, placement: Placement, *, graph: ModelGraph, job: JobSpec, hw: HardwareProfile) -> float:
    """Mean activation transfer over the pipeline's boundaries, each on its own link: the closed
    form's 2(p-1) hops then sum the boundaries exactly (the event simulator sees their mean)."""
    if plan.dims.pp == 1:
        return 0.0
    priced: dict[int, float] = {}  # boundaries on one link share its GroupSpan object: priced once
    hops = []
    for s in range(plan.dims.pp - 1):
        key = id(placement.stages[s].pp)
        if key not in priced:
            priced[key] = pp_p2p_s(plan, graph=graph, job=job, spans=placement.stages[s], hw=hw)
        hops.append(priced[key])
    return sum(hops) / len(hops)


# The step's mean loss, reduced over every rank for logging (Megatron's
# average_losses_across_data_parallel_group; this project's executor: one all-reduce over the world).
LOSS_SYNC_BYTES = 16.0  # loss and a count, fp64


def loss_sync_s(hw: HardwareProfile, placement: Placement) -> float:
    """One tiny blocking all-reduce over the world per step: latency bound (~tens of us on GPUs,
    milliseconds on an oversubscribed CPU node, where it also waits for descheduled peers)."""
    return group_collective_s(hw, Collective.ALL_REDUCE, LOSS_SYNC_BYTES, span=placement.world)
