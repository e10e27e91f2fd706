"""Two-tier ring collectives across nodes: a group with k members per node rides k NICs."""

import pytest

from planner.hardware import Collective, datasheet_profile, group_collective_s, group_span
from planner.hardware.topology import ring_bus_gbs
from planner.scenario import cluster_preset

# dgx-h100 datasheet profile: NVLink fit 450 GB/s x 0.80 = 360 GB/s, NDR NIC fit 50 GB/s x 0.85 =
# 42.5 GB/s, 8 us per inter-node ring step, no sync wait on a GPU.
CLUSTER = cluster_preset("dgx-h100", num_nodes=4)  # 32 GPUs, 8 per node
HW = datasheet_profile(CLUSTER)
GB = 1e9


def test_k_members_per_node_pool_k_nics_capped_by_nvlink() -> None:
    assert ring_bus_gbs(intra_gbs=360.0, nic_gbs=42.5, k=1) == 42.5
    assert ring_bus_gbs(intra_gbs=360.0, nic_gbs=42.5, k=2) == 85.0
    assert ring_bus_gbs(intra_gbs=360.0, nic_gbs=42.5, k=8) == 340.0  # 8 NICs, under NVLink's 360
    assert ring_bus_gbs(intra_gbs=300.0, nic_gbs=42.5, k=8) == 300.0  # NVLink caps


@pytest.mark.parametrize(("num_ranks", "stride", "expected_s"), [
    # 4 ranks, one per node (k = 1): 3 x 8 us + (3/4 x 1e9 B) / 42.5 GB/s = 0.024 + 17.647 ms
    (4, 8, 17.671e-3),
    # 8 ranks, two per node (k = 2): 7 x 8 us + (7/8 x 1e9) / 85 GB/s = 0.056 + 10.294 ms
    (8, 4, 10.350e-3),
    # 32 ranks, the whole cluster (k = 8): 31 x 8 us + (31/32 x 1e9) / 340 GB/s = 0.248 + 2.849 ms
    (32, 1, 3.097e-3),
])
def test_all_gather_across_nodes_by_members_per_node(num_ranks: int, stride: int, expected_s: float) -> None:
    span = group_span(CLUSTER, num_ranks=num_ranks, stride=stride)
    assert span.ranks_per_domain == num_ranks // 4
    assert group_collective_s(HW, Collective.ALL_GATHER, 1 * GB, span=span) == pytest.approx(expected_s, rel=1e-3)
