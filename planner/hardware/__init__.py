"""Hardware: the typed profile of a machine (profile.py, a leaf), datasheet profiles, and the topology
that says which links a group of ranks crosses."""

from planner.hardware.datasheets import DATASHEET_CITATIONS, GPU_LAUNCH_US, datasheet_profile, gemm_ceiling
from planner.hardware.profile import (
    Collective,
    CollectiveFit,
    CollectiveSample,
    Curve,
    DeviceInfo,
    DeviceKind,
    FlashRates,
    GemmRates,
    GemmTile,
    HardwareProfile,
    HostOverhead,
    IdentityKey,
    KernelSample,
    ProfileRangeWarning,
    ProfileSource,
    Tier,
    load_profile,
)
from planner.hardware.fabric import TierLevel
from planner.hardware.groups import node_group_profiles
from planner.hardware.links import NodeLinks, node_links
from planner.hardware.topology import (
    GroupSpan, axis_spans, composite_span, group_collective_s, group_span, p2p_s, strided_members,
)

__all__ = [
    "DATASHEET_CITATIONS", "GPU_LAUNCH_US", "Collective", "CollectiveFit", "CollectiveSample", "Curve",
    "DeviceInfo", "DeviceKind", "FlashRates", "GemmRates", "GemmTile", "GroupSpan", "HardwareProfile", "HostOverhead", "IdentityKey", "KernelSample",
    "ProfileRangeWarning", "ProfileSource", "Tier", "composite_span", "datasheet_profile", "gemm_ceiling",
    "group_collective_s", "group_span", "load_profile", "p2p_s", "NodeLinks", "TierLevel", "axis_spans",
    "node_group_profiles", "node_links", "strided_members",
]
