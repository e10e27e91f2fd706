"""Tiered fabrics (issue 15): SuperPOD presets, hierarchical levels per tier, uplink congestion."""

from __future__ import annotations

import pytest

from planner.hardware import (
    Collective,
    axis_spans,
    datasheet_profile,
    group_collective_s,
    strided_members,
)
from planner.hardware.fabric import uplink_load
from planner.scenario import (
    ClusterSpec,
    LoadBalancing,
    ScenarioError,
    cluster_preset,
    load_scenario,
)


def _with_fabric(preset: str, num_nodes: int) -> ClusterSpec:
    return cluster_preset(preset, num_nodes=num_nodes)


def test_superpod_presets_nest_and_cite() -> None:
    c = _with_fabric("superpod-h100", 2048)
    assert c.world_size == 16384
    assert [t.size_gpus for t in c.fabric.tiers] == [8, 256, 2048, 16384]
    gb = _with_fabric("superpod-gb200", 24576)
    assert gb.world_size == 98304 and gb.nvlink_domain == 64
    assert all(preset.citation for preset in (c.fabric, gb.fabric))


def test_fabric_mismatch_is_one_line(write_scenario) -> None:
    path = write_scenario('[model]\npreset = "llama3-8b"\n[cluster]\npreset = "dgx-h100"\nnum_nodes = 2\n'
                          '[cluster.fabric]\npreset = "superpod-gb200"\n[job]\nseq_len = 4096\nglobal_batch = 8\n')
    with pytest.raises(ScenarioError, match="fabric.tiers: the nvlink tier has 64 GPUs"):
        load_scenario(path)


def test_hierarchical_levels_follow_the_tiers() -> None:
    """A dp group of one GPU per node over 64 nodes: 32 nodes share a leaf (SU), 2 SUs meet at the spine."""
    c = _with_fabric("superpod-h100", 64)
    span = axis_spans(c, strided_members(c.world_size, [(64, 8)]))[0]
    assert [(lv.tier.value, lv.fan_in, lv.shard) for lv in span.levels] == [("leaf", 32, 1), ("spine", 2, 32)]
    tp = axis_spans(c, strided_members(c.world_size, [(8, 1)]))[0]
    assert [(lv.tier.value, lv.fan_in) for lv in tp.levels] == [("nvlink", 8)]


def test_three_tiers_cost_more_than_two_for_a_group_crossing_the_core() -> None:
    two, three = _with_fabric("superpod-h100", 2048), _with_fabric("superpod-h100", 2048)
    two = two.model_copy(update={"fabric": cluster_preset("superpod-h100").fabric.model_copy(
        update={"tiers": cluster_preset("superpod-h100").fabric.tiers[:2] + [
            cluster_preset("superpod-h100").fabric.tiers[2].model_copy(update={"size_gpus": 16384})]})})
    hw = datasheet_profile(three)
    members = strided_members(16384, [(2048, 8)])  # one GPU per node over the whole machine
    t2 = group_collective_s(hw, Collective.ALL_REDUCE, 1e9, span=axis_spans(two, members)[0])
    t3 = group_collective_s(hw, Collective.ALL_REDUCE, 1e9, span=axis_spans(three, members)[0])
    assert t3 > t2  # one more level: its latency hops and its own reduce-scatter/all-gather step


def test_ecmp_collisions_and_oversubscription_slow_uplinks() -> None:
    assert uplink_load(senders=256, domain_gpus=256, oversubscription=1, balancing=LoadBalancing.ADAPTIVE) == 1
    assert uplink_load(senders=256, domain_gpus=256, oversubscription=2, balancing=LoadBalancing.ADAPTIVE) == 2
    ecmp = uplink_load(senders=256, domain_gpus=256, oversubscription=1, balancing=LoadBalancing.ECMP)
    assert 2 < ecmp < 256  # balls into bins: the busiest uplink carries several flows
    assert uplink_load(senders=64, domain_gpus=256, oversubscription=2, balancing=LoadBalancing.ADAPTIVE) == 1
