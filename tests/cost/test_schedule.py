"""Pipeline simulator against the closed forms of Narayanan et al. 2021 and the schedules' invariants."""

import json

import pytest

from planner.cost.memory import in_flight
from planner.cost.schedule import ChunkTimes, Pass, closed_form, simulate
from planner.plan import Plan


def _plan(pp: int, *, schedule: str = "1f1b", vp: int = 1) -> Plan:
    return Plan(dims={"pp": pp}, schedule=schedule, virtual_stages=vp)


def _uniform(plan: Plan, *, fwd_s: float = 1.0, bwd_s: float = 2.0, weight_s: float = 0.0) -> list[ChunkTimes]:
    v = plan.virtual_stages
    return [ChunkTimes(fwd_s=fwd_s / v, bwd_s=bwd_s / v, weight_s=weight_s / v)] * plan.num_chunks


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (8, 8), (4, 32)])
def test_1f1b_bubble_is_p_minus_1_over_m_plus_p_minus_1(p: int, m: int) -> None:
    plan = _plan(p)
    sim = simulate(plan, times=_uniform(plan), p2p_s=0.0, num_micro_batches=m)
    assert sim.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))
    assert sim.makespan_s == pytest.approx((m + p - 1) * 3.0)


@pytest.mark.parametrize(("p", "v", "m"), [(2, 2, 4), (4, 2, 8), (4, 3, 8), (8, 4, 16)])
def test_interleaved_bubble_is_p_minus_1_over_vm_plus_p_minus_1(p: int, v: int, m: int) -> None:
    plan = _plan(p, schedule="interleaved-1f1b", vp=v)
    sim = simulate(plan, times=_uniform(plan), p2p_s=0.0, num_micro_batches=m)
    assert sim.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))


@pytest.mark.parametrize(("schedule", "vp"), [("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2)])
def test_closed_form_equals_simulation_for_equal_stages(schedule: str, vp: int) -> None:
    plan = _plan(4, schedule=schedule, vp=vp)
    times, m = _uniform(plan), 8
    sim = simulate(plan, times=times, p2p_s=0.0, num_micro_batches=m)
    exact = closed_form(plan, times=times, p2p_s=0.0, num_micro_batches=m)
    assert exact.makespan_s == pytest.approx(sim.makespan_s)
    assert exact.bubble_fraction == pytest.approx(sim.bubble_fraction)


def test_closed_form_tracks_simulation_with_p2p_and_a_heavy_last_stage() -> None:
    plan = _plan(4)
    times = [ChunkTimes(fwd_s=1.0, bwd_s=2.0)] * 3 + [ChunkTimes(fwd_s=1.5, bwd_s=2.5)]
    sim = simulate(plan, times=times, p2p_s=0.05, num_micro_batches=16)
    exact = closed_form(plan, times=times, p2p_s=0.05, num_micro_batches=16)
    assert exact.makespan_s == pytest.approx(sim.makespan_s, rel=0.03)


def test_zero_bubble_beats_1f1b_and_keeps_every_task() -> None:
    m, p = 8, 4
    zb = _plan(p, schedule="zero-bubble")
    times = _uniform(zb, fwd_s=1.0, bwd_s=2.0, weight_s=1.0)
    one = simulate(_plan(p), times=times, p2p_s=0.0, num_micro_batches=m)
    zero = simulate(zb, times=times, p2p_s=0.0, num_micro_batches=m)
    assert zero.makespan_s < one.makespan_s
    assert zero.makespan_s == pytest.approx(m * 3.0 + (p - 1) * 2.0)  # W leaves the bubble: (p-1)(F+B)
    exact = closed_form(zb, times=times, p2p_s=0.0, num_micro_batches=m)
    assert exact.makespan_s == pytest.approx(zero.makespan_s)
    traced = simulate(zb, times=times, p2p_s=0.0, num_micro_batches=m, timeline=True).timeline
    assert sum(e["cat"] == Pass.W.value for e in traced) == m * p


def test_gpipe_keeps_all_micro_batches_1f1b_keeps_p_minus_stage() -> None:
    assert in_flight(_plan(4, schedule="gpipe"), stage=0, num_micro_batches=16) == 16
    assert [in_flight(_plan(4), stage=s, num_micro_batches=16) for s in range(4)] == [4, 3, 2, 1]
    interleaved = in_flight(_plan(8, schedule="interleaved-1f1b", vp=3), stage=0, num_micro_batches=64)
    assert interleaved == pytest.approx(8 * (1 + 7 / 24))  # Korthikanti Sec. 4.2.3


def test_timeline_is_a_chrome_trace() -> None:
    plan = _plan(2)
    sim = simulate(plan, times=_uniform(plan), p2p_s=0.1, num_micro_batches=4, timeline=True)
    assert sim.timeline is not None and len(sim.timeline) == 2 * 2 * 4
    event = sim.timeline[0]
    assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(event) and event["ph"] == "X"
    json.dumps({"traceEvents": sim.timeline})
    per_stage = {}
    for e in sim.timeline:  # no two tasks of one stage overlap
        per_stage.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in per_stage.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
