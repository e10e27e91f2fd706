"""The [cluster.network] and [cluster.fabric] schema: NIC overrides, measured link tables, tiered fabrics.

A leaf like spec.py (pydantic and stdlib only). Bandwidths are GB/s per GPU per direction,
latencies microseconds, as in the rest of the scenario file.
"""

from __future__ import annotations

from enum import StrEnum

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# allow_inf_nan=False: every float a scenario takes is finite (as in spec.py).
_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
# Upper bounds that only catch typos and overflow (see spec.py): ~1000x NVLink5's 900 GB/s per
# direction; 2^24 GPUs, ~100x the largest 2025 training clusters.
MAX_BANDWIDTH_GBS = 1e7
MAX_GPUS = 2**24
_MAX_LATENCY_US = 1e6


class NodeLinkOverride(BaseModel):
    """A node whose NIC differs from the rest (Holmes/Pipette heterogeneous clusters)."""

    model_config = _FROZEN
    node: int = Field(ge=0)
    inter_node_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)


class PairLinkOverride(BaseModel):
    """A slow or fast path between two specific nodes."""

    model_config = _FROZEN
    nodes: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    inter_node_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)


class LinkSample(BaseModel):
    """One measured node pair (`planner profile --links`): bus bandwidth per GPU and latency."""

    model_config = _FROZEN
    nodes: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    bandwidth_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    latency_us: float = Field(ge=0, le=_MAX_LATENCY_US)
    rail: int | None = Field(None, ge=0, description="local GPU index both ends used; None = all rails")


class LinkTable(BaseModel):
    """Measured links between the nodes of one launch, and the NIC island each node sits in.

    Holmes (Yang et al. 2023) mixes InfiniBand and RoCE islands in one job: traffic inside an
    island runs at its NICs' rate, traffic between islands at the (slower) gateway rate. Both
    come out of the same per-pair table; `islands` only names them for the report.
    """

    model_config = _FROZEN
    num_nodes: int = Field(gt=0, le=MAX_GPUS)
    pairs: list[LinkSample] = []
    islands: list[str] | None = Field(None, description="per node, the NIC fabric it is on (e.g. ib, roce)")
    source: str = "measured"

    @model_validator(mode="after")
    def _in_range(self) -> LinkTable:
        for p in self.pairs:
            if max(p.nodes) >= self.num_nodes or p.nodes[0] == p.nodes[1]:
                raise ValueError(f"links.pairs: nodes {p.nodes} must be two distinct nodes < {self.num_nodes}")
        if self.islands is not None and len(self.islands) != self.num_nodes:
            raise ValueError(f"links.islands: has {len(self.islands)} entries for {self.num_nodes} nodes")
        return self

    def pair_gbs(self) -> dict[tuple[int, int], float]:
        """Slowest measured bandwidth per unordered node pair (rails measured separately: the slowest)."""
        out: dict[tuple[int, int], float] = {}
        for p in self.pairs:
            key = (min(p.nodes), max(p.nodes))
            out[key] = min(out.get(key, p.bandwidth_gbs), p.bandwidth_gbs)
        return out


class NetworkSpec(BaseModel):
    """Bandwidths are GB/s per GPU per direction; latencies in microseconds."""

    model_config = _FROZEN
    intra_node_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    inter_node_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    intra_node_latency_us: float = Field(3.0, ge=0, le=_MAX_LATENCY_US)
    inter_node_latency_us: float = Field(10.0, ge=0, le=_MAX_LATENCY_US)
    nvlink_domain: int | None = Field(None, gt=0, le=MAX_GPUS, description="GPUs sharing the fast tier; default gpus_per_node")
    node_overrides: list[NodeLinkOverride] = []
    pair_overrides: list[PairLinkOverride] = []
    links: LinkTable | None = Field(None, description="measured per-pair table (from a profile's `links`)")

    @property
    def heterogeneous(self) -> bool:
        """Whether some node or node pair differs from inter_node_gbs (group-aware pricing matters)."""
        return bool(self.node_overrides or self.pair_overrides or self.links)


class TierKind(StrEnum):
    """Levels of a hierarchical fabric, inside out (NVIDIA DGX SuperPOD reference architectures)."""

    NVLINK = "nvlink"  # NVSwitch domain: one node, or one NVL72 rack
    LEAF = "leaf"  # one scalable unit's leaf switches (one per rail when rail-optimised)
    SPINE = "spine"  # spine group joining the leaves of several SUs
    CORE = "core"  # core (super-spine) joining spine groups


class LoadBalancing(StrEnum):
    """How flows spread over the uplinks of a tier.

    ADAPTIVE: InfiniBand adaptive routing / Spectrum-X packet spraying: uplinks evenly loaded.
    ECMP: static per-flow hashing; flows that collide on one uplink share it (C4, Dong et al. 2024).
    """

    ADAPTIVE = "adaptive"
    ECMP = "ecmp"


class FabricTier(BaseModel):
    """One level of the fabric: GPUs under one switch domain of it, and its per-GPU links."""

    model_config = _FROZEN
    kind: TierKind
    size_gpus: int = Field(gt=0, le=MAX_GPUS, description="GPUs under one domain of this tier")
    bandwidth_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS, description="per GPU per direction on this tier's links")
    latency_us: float = Field(ge=0, le=_MAX_LATENCY_US, description="one crossing of this tier (switch hops, cables)")
    oversubscription: float = Field(1.0, ge=1.0, le=1e3, description="downlink:uplink ratio into this tier")


class FabricSpec(BaseModel):
    """A hierarchical fabric, innermost tier first: NVLink domain, then leaf, spine, core."""

    model_config = _FROZEN
    name: str = "custom"
    tiers: list[FabricTier] = Field(min_length=2)
    rail_optimized: bool = Field(True, description="one leaf per rail (GPU index) per SU; NCCL PXN aligns rails")
    load_balancing: LoadBalancing = LoadBalancing.ADAPTIVE
    citation: str | None = None

    @model_validator(mode="after")
    def _nested(self) -> FabricSpec:
        if self.tiers[0].kind != TierKind.NVLINK:
            raise ValueError("fabric.tiers: the first tier must be the nvlink domain")
        for inner, outer in zip(self.tiers, self.tiers[1:]):
            if outer.size_gpus % inner.size_gpus or outer.size_gpus <= inner.size_gpus:
                raise ValueError(f"fabric.tiers: {outer.kind.value} size {outer.size_gpus} must be a larger "
                                 f"multiple of {inner.kind.value} size {inner.size_gpus}")
        kinds = [t.kind for t in self.tiers]
        if len(set(kinds)) != len(kinds):
            raise ValueError("fabric.tiers: each tier kind at most once")
        return self

    @property
    def nvlink(self) -> FabricTier:
        return self.tiers[0]
