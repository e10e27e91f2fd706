"""One HardwareProfile per node group of a heterogeneous cluster (Metis, Um et al. 2024: A100 and
H100 nodes in one job). The profile the user passes describes the cluster's first GPU type; the
other groups get datasheet profiles of their own GPU (and NVLink rate) on the same network."""

from __future__ import annotations

from functools import lru_cache

from planner.hardware.datasheets import datasheet_profile
from planner.hardware.profile import HardwareProfile, IdentityKey
from planner.scenario import ClusterSpec


def node_group_profiles(hw: HardwareProfile, cluster: ClusterSpec) -> tuple[HardwareProfile, ...]:
    """Profile of each node group, in ClusterSpec.node_groups order; (hw,) for one GPU type."""
    if cluster.node_groups is None:
        return (hw,)
    return _profiles(IdentityKey(hw), IdentityKey(cluster))


@lru_cache(maxsize=64)
def _profiles(hw: IdentityKey, cluster_key: IdentityKey) -> tuple[HardwareProfile, ...]:
    cluster: ClusterSpec = cluster_key.obj
    out = []
    for group in cluster.node_groups or ():
        same = group.gpu.name == cluster.gpu.name and group.intra_node_gbs in (None, cluster.network.intra_node_gbs)
        if same:
            out.append(hw.obj)
            continue
        network = cluster.network.model_copy(update={"intra_node_gbs": group.intra_node_gbs or cluster.network.intra_node_gbs})
        out.append(datasheet_profile(cluster.model_copy(update={"gpu": group.gpu, "network": network, "node_groups": None})))
    return tuple(out)
