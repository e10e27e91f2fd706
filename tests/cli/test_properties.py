"""Property-based tests (hypothesis): generated and mutated scenarios, plans, profiles and HF
configs against the CLI contract, and the cost model's invariants.

The contract (issue 14): a verb either exits 0 with a valid result, or exits 2 with one line and
leaves every file as it was. Mutations draw from values that broke the CLI before: 0, negatives,
NaN, inf, 1e300, huge integers, empty strings and lists, wrong types, dropped keys.

Examples per run (max_examples): scenarios 150, HF configs 100, plans 60, profiles 40, estimate
flags 50, search 8, estimate invariants 200 (about 30 s in all on the 2-core machine); each
contract test records its exit codes as hypothesis events (--hypothesis-show-statistics).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cli_contract import assert_user_error, invoke, snapshot
from conftest import FIXTURES, REPO

from planner.cost import estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile, load_profile
from planner.plan import Plan, check
from planner.scenario import PRESETS, cluster_preset

# derandomize: CI draws the same examples on every run (a failure reproduces; no example database needed)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NASTY = st.sampled_from([0, -1, -8, 1, 2, 3, 7, 10**12, 2**63, 1e300, -1e300, 0.0, -0.5, 0.5, math.nan, math.inf,
                         -math.inf, "", "x", "1", [], [0], [-2, 0], {}, {"a": 1}, True, False, None])
TINY_MODELS = ["tiny-dense", "tiny-moe", "tiny-gpt", "tiny-mla"]
CLUSTERS = ["cpu-local", "dgx-h100", "gb200-nvl72", "dgx-a100"]


# -- TOML writing (tomllib only reads) ---------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 2**63 else json.dumps(str(v))  # TOML integers are 64-bit
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict) and v is not None]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


# -- strategies --------------------------------------------------------------------------------

@st.composite
def scenario_tables(draw) -> dict[str, Any]:
    """A plausible scenario: a tiny model on a small cluster, with an optional [search] table."""
    nodes = draw(st.sampled_from([1, 2, 4]))
    doc: dict[str, Any] = {
        "model": {"preset": draw(st.sampled_from(TINY_MODELS))},
        "cluster": {"preset": draw(st.sampled_from(CLUSTERS)), "num_nodes": nodes},
        "job": {"seq_len": draw(st.sampled_from([64, 128, 256])), "global_batch": draw(st.sampled_from([4, 8, 16])),
                "precision": draw(st.sampled_from(["bf16", "fp32"]))},
    }
    if draw(st.booleans()):
        doc["search"] = {"micro_batch_sizes": [1, 2], "zero_stages": [1, 3], "memory_fraction": 0.9}
    return doc


SCENARIO_PATHS = [("model", "preset"), ("model", "num_hidden_layers"), ("model", "hidden_size"),
                  ("model", "num_attention_heads"), ("model", "vocab_size"), ("cluster", "preset"),
                  ("cluster", "num_nodes"), ("cluster", "gpus_per_node"), ("cluster", "gpu"), ("cluster", "network"),
                  ("job", "seq_len"), ("job", "global_batch"), ("job", "precision"), ("search", "micro_batch_sizes"),
                  ("search", "schedules"), ("search", "zero_stages"), ("search", "memory_fraction"),
                  ("search", "fixed"), ("search", "max_tp"), ("model",), ("cluster",), ("job",), ("name",)]


def _mutate(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target
    if isinstance(target, dict):
        if value is None:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return doc


def _assert_contract(result, work: Path, before: dict, *, ok_check) -> None:
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        ok_check(result)
    else:
        assert_user_error(result)
        assert snapshot(work) == before


@given(doc=scenario_tables(), mutations=st.lists(st.tuples(st.sampled_from(SCENARIO_PATHS), NASTY), max_size=3))
@settings(max_examples=150, **SETTINGS)
def test_mutated_scenarios_keep_the_contract(doc: dict, mutations: list) -> None:
    for path, value in mutations:
        doc = _mutate(doc, path, value)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s.toml").write_text(to_toml(doc))
        before = snapshot(work)
        result = invoke(["check", work / "s.toml"])
        _assert_contract(result, work, before, ok_check=lambda r: "ok" in r.stdout)
        assert snapshot(work) == before  # check never writes


HF = {p.stem: json.loads(p.read_text()) for p in sorted((FIXTURES / "hf").glob("*.json"))}
HF["gpt2"] = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256}


@given(name=st.sampled_from(sorted(HF)), data=st.data())
@settings(max_examples=100, **SETTINGS)
def test_mutated_hf_configs_keep_the_contract(name: str, data) -> None:
    raw = copy.deepcopy(HF[name])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(raw) or ["model_type"]))
        raw = _mutate(raw, (key,), data.draw(NASTY))
    top = data.draw(st.sampled_from(["object", "object", "object", "array", "bom"]))
    text = json.dumps([raw] if top == "array" else raw)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "config.json").write_text(("\ufeff" if top == "bom" else "") + text)
        (work / "s.toml").write_text('[model]\nhf_config = "config.json"\n[cluster]\npreset = "dgx-h100"\n'
                                     "num_nodes = 8\n[job]\nseq_len = 1024\nglobal_batch = 64\n")
        before = snapshot(work)
        result = invoke(["check", work / "s.toml"])
        _assert_contract(result, work, before, ok_check=lambda r: "ok" in r.stdout)


TINY_TOML = ('[model]\npreset = "tiny-moe"\n[cluster]\npreset = "cpu-local"\n[job]\nseq_len = 128\n'
             'global_batch = 8\nprecision = "fp32"\n')
PLAN_FIELDS = ["dims", "micro_batch_size", "virtual_stages", "schedule", "zero_stage", "recompute",
               "sequence_parallel", "blocks_per_stage", "expert_placement", "rank_order", "version"]
GOOD_PLANS = [{"dims": {"dp": 4}}, {"dims": {"dp": 2, "pp": 2}, "schedule": "gpipe"},
              {"dims": {"dp": 2, "tp": 2}, "sequence_parallel": True}, {"dims": {"dp": 4, "ep": 2}, "zero_stage": 3}]


def _valid_estimate(result) -> None:
    est = json.loads(result.stdout)
    assert 0 <= est["mfu"] <= 1 and est["step_time_s"] > 0 and math.isfinite(est["step_time_s"])


@given(plan=st.sampled_from(GOOD_PLANS), data=st.data())
@settings(max_examples=60, **SETTINGS)
def test_mutated_plans_keep_the_contract(plan: dict, data) -> None:
    for _ in range(data.draw(st.integers(0, 2))):
        field = data.draw(st.sampled_from(PLAN_FIELDS))
        sub = data.draw(st.sampled_from([None, "dp", "tp", "pp", "ep"])) if field == "dims" else None
        plan = _mutate(plan, (field, sub) if sub else (field,), data.draw(NASTY))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s.toml").write_text(TINY_TOML)
        (work / "plan.json").write_text(json.dumps(plan))
        before = snapshot(work)
        result = invoke(["estimate", work / "s.toml", "--plan", work / "plan.json", "--json"])
        _assert_contract(result, work, before, ok_check=_valid_estimate)


PROFILE = json.loads((REPO / "profiles" / "cpu-2core.json").read_text())
PROFILE_PATHS = [("peak_tflops", "bf16"), ("peak_tflops", "fp32"), ("memory_gib",), ("memory_bandwidth_gbs",),
                 ("matmul_efficiency", "bf16"), ("matmul_efficiency", "fp32"), ("attention_efficiency",),
                 ("memory_bound_efficiency",), ("memory_bound_curve",), ("collectives",), ("host",),
                 ("host", "fwd_us_per_op"), ("host", "shared_cores"), ("runtime_bytes",), ("device",), ("name",)]


@given(mutations=st.lists(st.tuples(st.sampled_from(PROFILE_PATHS), NASTY), min_size=1, max_size=2))
@settings(max_examples=40, **SETTINGS)
def test_mutated_profiles_keep_the_contract(mutations: list) -> None:
    prof = PROFILE
    for path, value in mutations:
        prof = _mutate(prof, path, value)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s.toml").write_text(TINY_TOML)
        (work / "p.json").write_text(json.dumps(prof))
        before = snapshot(work)
        result = invoke(["estimate", work / "s.toml", "--profile", work / "p.json", "--dp", "2", "--pp", "2", "--json"])
        _assert_contract(result, work, before, ok_check=_valid_estimate)


FLAG_VALUES = st.sampled_from(["-8", "-1", "0", "1", "2", "3", "4", "8", "1000000000000"])


@given(flags=st.dictionaries(st.sampled_from(["--tp", "--pp", "--dp", "--cp", "--ep", "--etp", "--vp", "--mbs",
                                              "--zero"]), FLAG_VALUES, max_size=4),
       schedule=st.sampled_from([None, "gpipe", "1f1b", "interleaved-1f1b", "zero-bubble", "bogus"]),
       trace=st.booleans())
@settings(max_examples=50, **SETTINGS)
def test_estimate_flags_keep_the_contract(flags: dict, schedule: str | None, trace: bool) -> None:
    args = [x for kv in flags.items() for x in kv] + (["--schedule", schedule] if schedule else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s.toml").write_text(TINY_TOML)
        before = snapshot(work)
        out = ["--trace", work / "t.json"] if trace else []
        result = invoke(["estimate", work / "s.toml", *args, *out, "--json"])

        def ok(r) -> None:
            _valid_estimate(r)
            if trace:
                assert json.loads((work / "t.json").read_text())["traceEvents"] is not None
                assert sorted(p.name for p in work.iterdir()) == ["s.toml", "t.json"]  # no temp file left

        _assert_contract(result, work, before, ok_check=ok)


@given(doc=scenario_tables(), mutation=st.tuples(st.sampled_from(SCENARIO_PATHS[10:18]), NASTY))
@settings(max_examples=8, **SETTINGS)
def test_search_keeps_the_contract_and_the_users_files(doc: dict, mutation: tuple) -> None:
    """exit 0: the outputs are valid and the user's own files (a dotfile too) are untouched."""
    doc = _mutate(doc | {"cluster": {"preset": "cpu-local"}}, *mutation)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s.toml").write_text(to_toml(doc))
        out = work / "out"
        out.mkdir()
        (out / ".keep").write_text("mine")
        (out / "notes.txt").write_text("mine too")
        before = snapshot(work)
        result = invoke(["search", work / "s.toml", "--out", out, "--top", "1"])
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert Plan.load(out / "plan.json") is not None
            assert {"scenario", "best", "detailed"} <= set(json.loads((out / "result.json").read_text()))
            assert (out / ".keep").read_text() == "mine" and (out / "notes.txt").read_text() == "mine too"
            assert not [p for p in out.iterdir() if p.name.startswith(".planner-tmp")]
        else:
            assert_user_error(result)
            assert snapshot(work) == before


# -- estimate invariants (the cost model directly, graphs cached) -------------------------------

@cache
def _graph(model: str, seq_len: int):
    return extract_graph(PRESETS[model], seq_len=seq_len)


@st.composite
def priced_plans(draw):
    model = draw(st.sampled_from(TINY_MODELS))
    hw_name = draw(st.sampled_from(["datasheet", "cpu-2core"]))
    if hw_name == "cpu-2core":  # measured on one 4-rank node: it has no inter-node fits
        cluster = cluster_preset("cpu-local")
    else:
        cluster = cluster_preset(draw(st.sampled_from(CLUSTERS)), num_nodes=draw(st.sampled_from([1, 2])))
    world = cluster.world_size
    seq_len = draw(st.sampled_from([64, 256]))
    degrees = [d for d in (1, 2, 4, 8) if world % d == 0]
    tp = draw(st.sampled_from(degrees))
    pp = draw(st.sampled_from([d for d in degrees if (world // tp) % d == 0]))
    dp = world // (tp * pp)
    spec = PRESETS[model]
    ep = draw(st.sampled_from([d for d in (1, 2, 4) if spec.is_moe and (dp * tp) % d == 0 and
                               spec.num_local_experts % d == 0] or [1]))
    mbs = draw(st.sampled_from([1, 2]))
    schedule = draw(st.sampled_from(["1f1b", "gpipe"] + (["interleaved-1f1b"] if pp > 1 else [])))
    plan = {"dims": {"dp": dp, "tp": tp, "pp": pp, "ep": ep}, "micro_batch_size": mbs, "schedule": schedule,
            "virtual_stages": 2 if schedule == "interleaved-1f1b" else 1,
            "zero_stage": draw(st.sampled_from([0, 1, 2, 3])), "recompute": draw(st.sampled_from(["none", "selective", "full"])),
            "sequence_parallel": tp > 1 and draw(st.booleans())}
    batch = dp * mbs * pp * draw(st.sampled_from([1, 2, 4]))
    return model, cluster, seq_len, batch, plan, hw_name


@given(case=priced_plans())
@settings(max_examples=200, **SETTINGS)
@pytest.mark.filterwarnings("ignore::planner.hardware.ProfileRangeWarning")
def test_estimate_invariants(case) -> None:
    """MFU in [0, 1]; every term finite and >= 0; the breakdown's exposed terms sum to the step."""
    from planner.scenario import JobSpec, Scenario

    model, cluster, seq_len, batch, raw_plan, hw_name = case
    job = JobSpec(seq_len=seq_len, global_batch=batch, precision="fp32" if hw_name == "cpu-2core" else "bf16")
    scenario = Scenario(name="fuzz", model=PRESETS[model], cluster=cluster, job=job)
    plan = Plan.model_validate(raw_plan)
    try:
        check(plan, scenario)
    except ValueError:
        return  # an invalid plan is refused before pricing (the CLI tests cover its one line)
    hw = load_profile(REPO / "profiles" / "cpu-2core.json") if hw_name == "cpu-2core" else datasheet_profile(cluster)
    e = estimate(_graph(model, seq_len), plan, hw=hw, cluster=cluster, job=job)
    assert 0 <= e.mfu <= 1 and 0 <= e.hfu and e.mfu <= e.hfu + 1e-12
    assert math.isfinite(e.step_time_s) and e.step_time_s > 0 and e.tokens_per_s_per_gpu > 0
    assert all(math.isfinite(v) and v >= -1e-12 for v in e.time_breakdown_s.values()), e.time_breakdown_s
    assert all(math.isfinite(v) and v >= 0 for stage in e.stage_memory for v in stage.values())
    assert 0 <= e.bubble_fraction <= 1
    b = e.time_breakdown_s
    exposed = sum(b[k] for k in ("compute", "recompute", "exposed_comm", "bubble", "optimizer", "core_sharing"))
    assert math.isclose(exposed, e.step_time_s, rel_tol=1e-6), (exposed, e.step_time_s, b)
    assert e.peak_memory_bytes == max(sum(stage.values()) for stage in e.stage_memory)
