"""Search: structure on a stand-in cost table, then the real cost model on known shapes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.search import space as ss
from planner.cli import app
from planner.scenario import GIB, cluster_preset
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.scenario import model_preset
from planner.plan import ParallelDims, Plan, Recompute, Schedule, ZeroStage
from planner.scenario import JobSpec, ModelSpec, Scenario, SearchSpace
from planner.search import pareto_front, search
from planner.scenario.published import map_row

VALIDATION = Path(__file__).resolve().parents[1] / "data" / "published_runs.csv"


def build_graph(spec: ModelSpec, *, seq_len: int):
    return extract_graph(spec, seq_len=seq_len)


def _scenario(model: str | ModelSpec, *, cluster: str, nodes: int, seq: int, gbs: int, **space) -> Scenario:
    spec = model_preset(model) if isinstance(model, str) else model
    return Scenario(name="t", model=spec, cluster=cluster_preset(cluster, num_nodes=nodes),
                    job=JobSpec(seq_len=seq, global_batch=gbs), search=SearchSpace(**space))


@dataclass(frozen=True)
class _FakeEstimate:
    step_time_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    peak_memory_bytes: float
    fits: bool
    memory_capacity_bytes: float
    stage_memory: list
    time_breakdown_s: dict


class _StandIn:
    """A tiny cost table: time = 1/(dp) + 0.3*(tp-1) + bubble, memory = 100/(tp*pp) GiB + zero."""

    def estimate(self, graph, plan: Plan, *, hw, cluster, job, timeline=False):
        d = plan.dims
        m = plan.num_micro_batches(job.global_batch)
        t = 64 / (d.dp * d.tp * d.pp) + 0.3 * (d.tp - 1) + (d.pp - 1) / m + 0.01 * int(plan.zero_stage)
        t *= 1.3 if plan.recompute == Recompute.FULL else 1.0
        mem = (100 / (d.tp * d.pp) / (d.dp if plan.zero_stage == ZeroStage.PARAMETERS else 1)
               + (2 if plan.recompute == Recompute.FULL else 40) / d.tp) * GIB
        cap = 80 * GIB
        return _FakeEstimate(step_time_s=t, tokens_per_s_per_gpu=1 / t, mfu=0.5, peak_memory_bytes=mem, fits=mem <= cap,
                             memory_capacity_bytes=cap, stage_memory=[{"weights": mem}] * d.pp,
                             time_breakdown_s={"compute": t})

    def memory_lower_bound_bytes(self, graph, plan, job, cluster):
        d = plan.dims
        return 100 / (d.tp * d.pp) / (d.dp if plan.zero_stage == ZeroStage.PARAMETERS else 1) * GIB


def test_stand_in_cost_table_ranks_and_explains_every_rejection() -> None:
    sc = _scenario("llama3-8b", cluster="dgx-a100", nodes=2, seq=2048, gbs=64)
    graph = build_graph(sc.model, seq_len=sc.job.seq_len)
    result = search(graph, sc, hw=datasheet_profile(sc.cluster), estimator=_StandIn())
    assert result.best is not None and result.best.rank == 1
    d = result.best.plan.dims
    # the stand-in rewards dp and punishes tp; tp=1 without recompute needs 100/pp + 40 <= 80 GiB
    assert d.tp == 1 and d.cp == 1 and result.best.plan.recompute == Recompute.NONE
    fitting = [c for c in result.candidates if c.fits]
    assert all(result.best.estimate.step_time_s <= c.estimate.step_time_s for c in fitting)
    assert all(c.reason for c in result.candidates if not c.fits)
    assert any(c.reason.startswith("OOM") for c in result.candidates if c.reason)
    s = result.stats
    assert s.enumerated >= s.costed > 0 and s.layouts == sum(1 for _ in ss.layouts(sc))
    front = result.pareto
    for a in front:  # nothing on the front is beaten on both axes
        assert not any(b.estimate.tokens_per_s_per_gpu > a.estimate.tokens_per_s_per_gpu
                       and b.estimate.peak_memory_bytes < a.estimate.peak_memory_bytes for b in fitting)
    assert pareto_front(fitting) == front


def test_layouts_follow_model_rules() -> None:
    sc = _scenario("llama3-70b", cluster="dgx-h100", nodes=2, seq=4096, gbs=32)
    for lay, reason in ss.layouts(sc):
        assert lay.dp * lay.tp * lay.pp * lay.cp == 16
        if reason is None:
            assert 64 % lay.tp == 0 and (8 % lay.tp == 0 or lay.tp % 8 == 0) and 32 % lay.dp == 0
    moe = _scenario("mixtral-8x7b", cluster="dgx-h100", nodes=1, seq=4096, gbs=32)
    folded = [lay for lay, r in ss.layouts(moe) if r is None]
    assert all(8 % lay.ep == 0 and (lay.dp * lay.cp * lay.tp) % (lay.ep * lay.etp) == 0 for lay in folded)
    assert any(lay.ep == 8 and lay.tp == 1 for lay in folded)


def _real(sc: Scenario):
    return search(build_graph(sc.model, seq_len=sc.job.seq_len), sc, hw=datasheet_profile(sc.cluster))


def test_model_that_fits_one_gpu_gets_pure_data_parallelism() -> None:
    result = _real(_scenario("gpt3-350m", cluster="dgx-a100", nodes=1, seq=2048, gbs=64))
    d = result.best.plan.dims
    assert (d.tp, d.pp, d.cp) == (1, 1, 1) and d.dp == 8


def test_tensor_parallelism_stays_inside_a_node() -> None:
    result = _real(_scenario("llama3-70b", cluster="dgx-h100", nodes=4, seq=4096, gbs=64))
    assert result.best.plan.dims.tp <= 8
    assert all(c.plan.dims.tp <= 8 for c in result.top[:5])


def test_moe_search_places_experts_better_than_round_robin() -> None:
    result = _real(_scenario("mixtral-8x7b", cluster="dgx-h100", nodes=2, seq=4096, gbs=64, max_tp=4))
    if result.best.plan.dims.ep == 1:
        pytest.skip("the cost model preferred no expert parallelism here")
    moe = result.moe
    assert moe is not None and moe.cost_s < moe.round_robin_s
    # the cost model prices the placement against its contiguous twin on the same trace, per step;
    # with one expert per EP rank (ep = 8 = experts) no placement changes a rank's tokens
    placed = [c for c in result.candidates if c.plan.expert_placement is not None]
    assert placed and 0 <= moe.saved_s < moe.unplaced_step_time_s
    assert moe.step_time_s == pytest.approx(min(c.estimate.step_time_s for c in placed))


def test_nothing_fits_is_one_line_and_exit_2(write_scenario) -> None:
    path = write_scenario("""
[model]
preset = "llama3.1-405b"
[cluster]
preset = "dgx-h100"
num_nodes = 1
[job]
seq_len = 8192
global_batch = 8
[search]
zero_stages = [0, 1]
recompute = ["none"]
""")
    out = CliRunner().invoke(app, ["search", str(path), "--out", str(path.parent / "out")])
    assert out.exit_code == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nothing fits" in lines[0] and "GiB over" in lines[0] and "ZeRO-3" in lines[0]
    assert not (path.parent / "out").exists()


def _validation_rows() -> list[dict]:
    rows = [r for r in csv.DictReader(VALIDATION.open()) if r["config_complete"].startswith("yes")]
    return [r for r in rows if not r["moe_experts"]]


def _row_scenario(row: dict) -> tuple[Scenario, Plan]:
    """The row as `planner validate` maps it (scenario/published.py), with the search space
    widened to hold its micro-batch size."""
    run = map_row(row)
    assert run.reason is None, run.reason
    sc, plan = run.scenario, run.plan
    sizes = sorted({1, 2, 4, 8, plan.micro_batch_size})
    return sc.model_copy(update={"search": sc.search.model_copy(update={"micro_batch_sizes": sizes})}), plan


def _published_in_space(sc: Scenario, plan: Plan) -> bool:
    d = plan.dims
    lay = ParallelDims(dp=d.dp, tp=d.tp, pp=d.pp, cp=d.cp)
    valid = dict(ss.layouts(sc)).get(lay, "missing") is None
    sched = (plan.schedule, plan.virtual_stages) in ss.schedules(sc, lay, plan.micro_batch_size)
    return (valid and sched and plan.micro_batch_size in ss.micro_batch_sizes(sc, lay)
            and plan.zero_stage in sc.search.zero_stages and plan.recompute in sc.search.recompute)


_ROWS = _validation_rows()
_FAST = {"1", "25"}


@pytest.mark.parametrize("row", [pytest.param(r, id=f"row{r['row_id']}",
                                              marks=() if r["row_id"] in _FAST else pytest.mark.slow) for r in _ROWS])
def test_published_layout_is_searched_and_not_beaten(row: dict) -> None:
    """Published layouts (shared/validation/published_runs.csv, complete rows) lie inside the
    search space, and the best plan predicts at least the published layout's throughput."""
    from planner.cost import estimate

    sc, plan = _row_scenario(row)
    assert _published_in_space(sc, plan), f"row {row['row_id']}: {plan.describe()} is outside the search space"
    graph = build_graph(sc.model, seq_len=sc.job.seq_len)
    hw = datasheet_profile(sc.cluster)
    published = estimate(graph, plan, hw=hw, cluster=sc.cluster, job=sc.job)
    result = search(graph, sc, hw=hw)
    assert result.best is not None
    if published.fits:
        assert result.best.estimate.tokens_per_s_per_gpu >= published.tokens_per_s_per_gpu * (1 - 1e-9)


def test_pausing_the_garbage_collector_changes_no_search_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """search pauses the cyclic collector (graph/collector.py); with it collecting at every chance
    instead, every candidate, estimate and rank is the same, and the collector is on afterwards."""
    import contextlib
    import gc

    import planner.search.engine as engine

    sc = _scenario("tiny-moe", cluster="cpu-local", nodes=1, seq=128, gbs=8)
    graph, hw = build_graph(sc.model, seq_len=128), datasheet_profile(sc.cluster)

    def outcome() -> list[tuple]:
        result = search(graph, sc, hw=hw)
        return [(c.plan.to_json(), c.fits, c.reason, c.rank, None if c.estimate is None else c.estimate.to_dict())
                for c in result.candidates]

    paused = outcome()
    assert gc.isenabled()
    monkeypatch.setattr(engine, "collector_paused", contextlib.nullcontext)
    threshold = gc.get_threshold()
    gc.set_threshold(50, 1, 1)  # a full collection every ~50 allocations
    try:
        collected = outcome()
    finally:
        gc.set_threshold(*threshold)
    assert paused == collected and any(c[1] for c in paused)
