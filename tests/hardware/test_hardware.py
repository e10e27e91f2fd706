"""HardwareProfile schema, datasheet defaults, curve queries and tier selection."""

from pathlib import Path

import pytest

from planner.scenario import cluster_preset
from planner.hardware import Collective, Curve, Tier, datasheet_profile, load_profile
from planner.hardware import group_collective_s, group_span, p2p_s
from planner.scenario import ClusterSpec, Precision

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SHIPPED = {"a100": "dgx-a100", "h100": "dgx-h100", "h200": "hgx-h200", "b200": "dgx-b200", "mi300x": "mi300x-8"}


@pytest.mark.parametrize(("short", "preset"), SHIPPED.items())
def test_shipped_datasheet_profiles_match_the_generator(short: str, preset: str) -> None:
    on_disk = load_profile(PROFILES / f"{short}-datasheet.json")
    fresh = datasheet_profile(cluster_preset(preset))
    assert on_disk.source == "datasheet" and on_disk.citations
    assert on_disk.model_dump(exclude={"created"}) == fresh.model_dump(exclude={"created"})


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    hw = datasheet_profile(cluster_preset("dgx-h100"))
    path = tmp_path / "p.json"
    path.write_text(hw.model_dump_json())
    assert load_profile(path) == hw


def test_load_profile_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.json: --profile: profile file not found"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(datasheet_profile(cluster_preset("dgx-a100")).model_dump_json().replace('"name"', '"nmae"', 1))
    with pytest.raises(ValueError, match="nmae") as err:
        load_profile(bad)
    assert "\n" not in str(err.value)


def test_curve_interpolates_in_log_space_and_clamps() -> None:
    curve = Curve(points=[(1e6, 0.1), (1e8, 0.5)])
    assert curve.at(1e7) == pytest.approx(0.3)
    assert curve.at(1.0) == 0.1 and curve.at(1e12) == 0.5
    assert curve.covers(1e7) and not curve.covers(1e9)
    with pytest.raises(ValueError, match="sorted"):
        Curve(points=[(1e8, 0.5), (1e6, 0.1)])


def test_bigger_gemms_run_closer_to_peak() -> None:
    hw = datasheet_profile(cluster_preset("dgx-a100"))
    small, large = 1e9, 1e12
    tput_small = small / hw.matmul_s(small, precision=Precision.BF16)
    tput_large = large / hw.matmul_s(large, precision=Precision.BF16)
    assert tput_small < 0.5 * tput_large < 312e12


def test_groups_inside_the_nvlink_domain_are_intra_node() -> None:
    cluster = cluster_preset("dgx-h100", num_nodes=4)
    assert group_span(cluster, num_ranks=8, stride=1).tier == Tier.INTRA_NODE
    assert group_span(cluster, num_ranks=4, stride=2).tier == Tier.INTRA_NODE
    across = group_span(cluster, num_ranks=4, stride=8)
    assert across.tier == Tier.INTER_NODE and across.ranks_per_domain == 1
    assert group_span(cluster, num_ranks=16, stride=1).ranks_per_domain == 8


def test_tp_across_nodes_is_slower_than_inside() -> None:
    cluster = cluster_preset("dgx-h100", num_nodes=4)
    hw = datasheet_profile(cluster)
    inside = group_collective_s(hw, Collective.ALL_REDUCE, 1e8, span=group_span(cluster, num_ranks=8, stride=1))
    across = group_collective_s(hw, Collective.ALL_REDUCE, 1e8, span=group_span(cluster, num_ranks=8, stride=4))
    assert across > 3 * inside


def test_slow_node_override_slows_groups_that_cross_it() -> None:
    base = cluster_preset("dgx-a100", num_nodes=4)
    data = base.model_dump()
    data["network"]["node_overrides"] = [{"node": 2, "inter_node_gbs": 5.0}]
    slow = ClusterSpec.model_validate(data)
    hw = datasheet_profile(base)
    args = {"num_ranks": 4, "stride": 8}
    t_base = group_collective_s(hw, Collective.ALL_REDUCE, 1e9, span=group_span(base, **args))
    t_slow = group_collective_s(hw, Collective.ALL_REDUCE, 1e9, span=group_span(slow, **args))
    assert t_slow == pytest.approx(t_base * 5.0, rel=0.05)
    assert p2p_s(hw, 1e8, span=group_span(slow, num_ranks=2, stride=8)) > p2p_s(
        hw, 1e8, span=group_span(base, num_ranks=2, stride=8))


def test_pair_override_only_hits_groups_spanning_that_pair() -> None:
    base = cluster_preset("dgx-a100", num_nodes=4)
    data = base.model_dump()
    data["network"]["pair_overrides"] = [{"nodes": (0, 1), "inter_node_gbs": 2.5}]
    cluster = ClusterSpec.model_validate(data)
    assert group_span(cluster, num_ranks=2, stride=8).nic_scale == pytest.approx(0.1)  # nodes (0,1),(2,3)
    assert group_span(cluster, num_ranks=2, stride=16).nic_scale == 1.0  # nodes (0,2),(1,3)
