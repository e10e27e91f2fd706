"""Routing traces: the documented format, the executor's measurement.json, named mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from executor.train import Measurement
from planner.search.ilp import load_routing_trace
from planner.search.ilp.routing import check_matches

TRACE = {"num_experts": 4,
         "layers": [{"layer": 0, "expert_tokens": [10, 0, 5, 1]}, {"layer": 1, "expert_tokens": [2, 2, 8, 4]}],
         "affinity": [{"from_layer": 0, "to_layer": 1, "matrix": [[1, 2, 3, 4], [0] * 4, [1, 1, 1, 2], [0, 0, 1, 0]]}]}


def _write(tmp_path: Path, data: object, name: str = "trace.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_readme_documents_the_trace_format() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Routing traces", 1)[1].split("\n## ", 1)[0]
    for field in ("num_experts", "expert_tokens", "affinity", "from_layer", "to_layer", "matrix", "measurement.json"):
        assert field in section


def test_trace_and_the_executors_measurement_read_the_same(tmp_path: Path) -> None:
    measurement = Measurement(scenario="s", model="tiny-moe", plan={}, world_size=4, backend="gloo", device="cpu",
                              steps=1, step_time_s=0.1, step_times_s=[0.1], tokens_per_s_per_gpu=1.0,
                              peak_memory_gib=0.1, memory_gib=[0.1] * 4, losses=[1.0], routing=TRACE)
    direct = load_routing_trace(_write(tmp_path, TRACE))
    via_run = load_routing_trace(_write(tmp_path, json.loads(measurement.model_dump_json()), "measurement.json"))
    assert direct.expert_tokens.tolist() == via_run.expert_tokens.tolist() == [[10, 0, 5, 1], [2, 2, 8, 4]]
    assert direct.affinity[0, 0].tolist() == [1, 2, 3, 4]


def test_dense_measurement_says_it_has_no_trace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="measurement has no routing trace"):
        load_routing_trace(_write(tmp_path, {"routing": None, "losses": [1.0]}, "measurement.json"))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda t: t["layers"][1].update(expert_tokens=[1, 2, 3]), r"layers\[1\].expert_tokens has 3 entries but num_experts=4"),
    (lambda t: t["affinity"][0].update(matrix=[[1, 2], [3, 4]]), r"affinity\[0\].matrix is 2x2 but num_experts=4 needs 4x4"),
    (lambda t: t["affinity"][0].update(to_layer=7), r"affinity\[0\] from_layer/to_layer must name consecutive"),
])
def test_malformed_trace_names_the_field(tmp_path: Path, mutate, message: str) -> None:
    trace = json.loads(json.dumps(TRACE))
    mutate(trace)
    with pytest.raises(ValueError, match=message):
        load_routing_trace(_write(tmp_path, trace))


def test_trace_of_another_model_names_the_mismatch(tmp_path: Path) -> None:
    stats = load_routing_trace(_write(tmp_path, TRACE))
    with pytest.raises(ValueError, match="has 2 MoE layers x 4 experts but the model has 58 MoE layers x 256 experts"):
        check_matches(stats, num_layers=58, num_experts=256)
