"""[job.sequences], [cluster.host] and the plan's long-context knobs: one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.errors import ScenarioError
from planner.plan import Plan, problems
from planner.scenario import HostLink, cluster_preset, load_scenario, model_preset, scenario_from_dict

REPO = Path(__file__).resolve().parents[2]
BASE = {"model": {"preset": "llama3-8b"}, "cluster": {"preset": "dgx-h100"}, "job": {"seq_len": 8192, "global_batch": 8}}


def _load(**job) -> object:
    raw = BASE | {"job": BASE["job"] | job}
    return scenario_from_dict(raw, base_dir=REPO, name="t", source="t.toml")


def test_sequences_table_and_host_link():
    sc = load_scenario(REPO / "scenarios" / "llama3-8b-longdocs_h100x64.toml")
    assert sc.job.sequences.mix == "long-tail" and sc.job.sequences.balance == "sort-and-pack"
    assert sc.cluster.host.link == HostLink.PCIE_GEN5
    grace = scenario_from_dict(BASE | {"cluster": {"preset": "gb200-nvl72", "host": {"memory_gib": 100}}},
                               base_dir=REPO, name="t", source="t.toml")
    assert grace.cluster.host.link == HostLink.NVLINK_C2C and grace.cluster.host.memory_gib == 100
    # the SuperPOD presets (issue 15) carry their node's host side too: Grace on GB200, PCIe 5.0 on B200
    assert cluster_preset("superpod-gb200", num_nodes=16).host.link == HostLink.NVLINK_C2C
    assert cluster_preset("superpod-b200", num_nodes=2).host.link == HostLink.PCIE_GEN5


@pytest.mark.parametrize(("sequences", "needle"), [
    ({"mix": "nope"}, "sequences.mix"),
    ({}, "exactly one of mix"),
    ({"mix": "web", "balance": "random"}, "balance"),
    ({"histogram": [{"max_tokens": 512, "share": 1}, {"max_tokens": 256, "share": 1}]}, "strictly increasing"),
])
def test_bad_sequences_are_one_line(sequences: dict, needle: str):
    with pytest.raises(ScenarioError, match=needle) as err:
        _load(sequences=sequences)
    assert "\n" not in str(err.value) and "t.toml" in str(err.value)


def test_plan_knob_rules():
    with pytest.raises(ValueError, match="vocab_parallel"):
        Plan.model_validate({"vocab_parallel": True})
    with pytest.raises(ValueError, match="cp_a2a"):
        Plan.model_validate({"dims": {"cp": 4}, "cp_a2a": 2})
    plan = Plan.model_validate({"dims": {"cp": 8, "tp": 8}, "cp_kind": "all-to-all"})
    sc = _load()
    sc = sc.model_copy(update={"cluster": sc.cluster.model_copy(update={"num_nodes": 8})})
    assert any("cp_kind" in p for p in problems(plan, sc))  # 32 heads / tp 8 = 4 local heads over 8 ranks
    assert model_preset("llama3-8b").num_attention_heads == 32
