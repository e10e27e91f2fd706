"""Rank order and device mapping of the best plans: which axis sits innermost, which node runs which
logical node. The cost model (group-aware, per stage) judges every variant.

1. Rank order: the orders of the axes whose degree is > 1 are tried for the top layouts (rank
   order alone moves a dp8 x tp8 plan between 32.6 s and 82.8 s), attention axes then expert axes.
2. Device mapping, where links differ (overrides, a measured link table, NIC islands): the
   Holmes/Pipette ILP (search/ilp/devices.py) on up to 16 mapping units with its proven gap (on
   its slowest-link objective), and a scalable heuristic at any size: the heaviest logical units
   on the fastest NICs, then pairwise swaps while the slowest link time falls; the best of the
   identity, heuristic and ILP then gets pairwise swaps priced by the cost model itself. Units are NVLink domains (a multi-node
   NVL72 rack moves whole) and local GPUs never move, so every group stays rail-aligned.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from planner.hardware import node_links
from planner.plan import DEFAULT_EXPERT_RANK_ORDER, DEFAULT_RANK_ORDER, Axis, Plan, mapping_from_nodes, rank_grid
from planner.search import ilp
from planner.search.pricer import Pricer
from planner.search.result import Candidate, MappingSummary

_ORDER_TOP = 3  # fitting layouts whose rank orders are tried
_ILP_MAX_UNITS = 16
_ILP_LIMIT_S = 5.0
_SWAP_ROUNDS = 4  # passes of pairwise swaps in the heuristic
_SWAP_BUDGET = 120  # cost-model estimates the final swap pass may spend (~5 ms each)
_RING_ALL_REDUCE_FACTOR = 2  # a ring all-reduce sends ~2x the buffer per rank (nccl-tests PERFORMANCE.md)
_FWD_AND_BWD = 2  # pipeline neighbours exchange activations forward and gradients backward


def vary_rank_orders(run: Pricer) -> None:
    """Price every order of the non-trivial axes for the best few layouts (the cost model keeps the best)."""
    fitting = sorted((c for c in run.candidates if c.fits), key=lambda c: c.estimate.step_time_s)
    seen = set()
    for cand in fitting:
        if len(seen) >= _ORDER_TOP:
            break
        if cand.plan.dims in seen:
            continue
        seen.add(cand.plan.dims)
        best = min((run.cost(p) for p in _orders(cand.plan, attention=True)), key=_time, default=cand)
        for plan in _orders(best.plan, attention=False):
            run.cost(plan)


def _orders(plan: Plan, *, attention: bool) -> list[Plan]:
    d = plan.dims
    default = DEFAULT_RANK_ORDER if attention else DEFAULT_EXPERT_RANK_ORDER
    active = [a for a in default if d.degree(a) > 1]
    if len(active) < 2 or (not attention and d.ep * d.etp == 1):
        return []
    out = []
    for perm in itertools.permutations(active):
        it = iter(perm)
        order = [next(it) if d.degree(a) > 1 else a for a in default]
        field = "rank_order" if attention else "expert_rank_order"
        if order != list(getattr(plan, field)):
            out.append(plan.model_copy(update={field: order}))
    return out


def _time(c: Candidate) -> float:
    return c.estimate.step_time_s if c.fits else float("inf")


def map_devices(run: Pricer, best: Candidate) -> MappingSummary | None:
    """Search a node mapping for the best plan where links differ; the faster mapped plan is priced in."""
    cluster = run.scenario.cluster
    if not cluster.network.heterogeneous:
        return None
    unit = max(1, cluster.nvlink_domain // cluster.gpus_per_node)  # nodes per NVLink domain move together
    problem = mapping_problem(run, best, unit=unit)
    start = time.perf_counter()
    heuristic = greedy_swap(problem)
    heuristic_s = time.perf_counter() - start
    options = {"identity": list(range(len(problem.node_bytes))), "heuristic": heuristic}
    solve = None
    if len(problem.node_bytes) <= _ILP_MAX_UNITS:
        solve = ilp.map_devices(problem, time_limit_s=_ILP_LIMIT_S)
        options["ilp"] = list(solve.node_of)
    priced = {name: run.cost(_mapped(best.plan, units, unit=unit, gpus_per_node=cluster.gpus_per_node))
              for name, units in options.items()}
    start = min(priced, key=lambda k: _time(priced[k]))  # ties keep the identity (listed first)
    options["swaps"], priced["swaps"] = _cost_swaps(run, best.plan, options[start], unit=unit)
    method = min(priced, key=lambda k: _time(priced[k]))
    node_of = _nodes(options[method], unit=unit)
    return MappingSummary(node_of=node_of, slowest_link_s=problem.evaluate(options[method]),
                          identity_s=problem.evaluate(list(range(len(problem.node_bytes)))),
                          status=solve.solve.status.value if solve else "not run (over 16 units)",
                          method=method, gap=solve.solve.gap if solve else None,
                          identity_step_s=best.estimate.step_time_s, mapped_step_s=_time(priced[method]),
                          heuristic_step_s=_time(priced["heuristic"]), heuristic_solve_s=heuristic_s,
                          ilp_step_s=_time(priced["ilp"]) if "ilp" in priced else None)


def _cost_swaps(run: Pricer, plan: Plan, units: list[int], *, unit: int) -> tuple[list[int], Candidate]:
    """First-improvement pairwise swaps of mapping units, each priced by the cost model (the
    judge the ILP and greedy objectives only approximate), within _SWAP_BUDGET estimates."""
    gpn = run.scenario.cluster.gpus_per_node
    units = list(units)
    best = run.cost(_mapped(plan, units, unit=unit, gpus_per_node=gpn))
    budget = _SWAP_BUDGET
    improved = True
    while improved and budget > 0:
        improved = False
        for a, b in itertools.combinations(range(len(units)), 2):
            if budget <= 0:
                break
            budget -= 1
            units[a], units[b] = units[b], units[a]
            cand = run.cost(_mapped(plan, units, unit=unit, gpus_per_node=gpn))
            if _time(cand) < _time(best) - 1e-12:
                best, improved = cand, True
            else:
                units[a], units[b] = units[b], units[a]
    return units, best


def _nodes(units: list[int], *, unit: int) -> list[int]:
    return [units[u // unit] * unit + u % unit for u in range(len(units) * unit)]


def _mapped(plan: Plan, units: list[int], *, unit: int, gpus_per_node: int) -> Plan:
    nodes = _nodes(units, unit=unit)
    if nodes == list(range(len(nodes))):
        return plan
    return plan.model_copy(update={"device_mapping": mapping_from_nodes(nodes, gpus_per_node=gpus_per_node)})


def greedy_swap(problem: ilp.DeviceMappingProblem) -> list[int]:
    """Heaviest logical unit on the fastest NIC, then improving pairwise swaps (Holmes objective)."""
    n = len(problem.node_bytes)
    by_load = sorted(range(n), key=lambda u: -problem.node_bytes[u])
    by_speed = sorted(range(n), key=lambda i: -problem.nic_gbs[i])
    node_of = [0] * n
    for u, i in zip(by_load, by_speed, strict=True):
        node_of[u] = i
    if problem.evaluate(list(range(n))) <= problem.evaluate(node_of):
        node_of = list(range(n))
    best = problem.evaluate(node_of)
    for _ in range(_SWAP_ROUNDS):
        improved = False
        for a in range(n):
            for b in range(a + 1, n):
                node_of[a], node_of[b] = node_of[b], node_of[a]
                t = problem.evaluate(node_of)
                if t < best - 1e-12:
                    best, improved = t, True
                else:
                    node_of[a], node_of[b] = node_of[b], node_of[a]
        if not improved:
            break
    return node_of


def mapping_problem(run: Pricer, cand: Candidate, *, unit: int = 1) -> ilp.DeviceMappingProblem:
    """Logical mapping units of a plan and their inter-unit traffic: the data-parallel gradient sync
    of the stages on each unit (a ring all-reduce of the stage's weights), activations between
    pipeline neighbours; NIC and pair bandwidth from overrides or the measured link table."""
    cluster, plan = run.scenario.cluster, cand.plan
    per_unit, d = cluster.gpus_per_node * unit, plan.dims
    grid = rank_grid(plan).attention
    by_stage = np.moveaxis(grid, plan.rank_order.index(Axis.PP), 0).reshape(d.pp, -1)
    stage = np.empty(cluster.world_size, dtype=int)
    for s in range(d.pp):
        stage[by_stage[s]] = s
    weights = np.array([t.get("weights", 0.0) for t in cand.estimate.stage_memory])
    num_units = cluster.num_nodes // unit
    ranks = stage.reshape(num_units, per_unit)
    node_bytes = tuple(float(_RING_ALL_REDUCE_FACTOR * weights[ranks[u]].sum()) for u in range(num_units))
    job = run.scenario.job
    act = plan.micro_batch_size * job.seq_len * run.scenario.model.hidden_size * job.precision.bytes / (d.tp * d.cp)
    m = plan.num_micro_batches(job.global_batch)
    stages_of = [set(ranks[u].tolist()) for u in range(num_units)]
    edges = tuple((u, v, float(_FWD_AND_BWD * m * act)) for u in range(num_units) for v in range(u + 1, num_units)
                  if any(abs(a - b) == 1 for a in stages_of[u] for b in stages_of[v]))
    links = node_links(cluster)
    nic = tuple(float(links.nic_gbs[u * unit:(u + 1) * unit].min()) for u in range(num_units))
    pairs = {}
    for (i, j), gbs in links.pair_gbs.items():
        a, b = i // unit, j // unit
        if a != b:
            pairs[(min(a, b), max(a, b))] = min(gbs, pairs.get((min(a, b), max(a, b)), gbs))
    return ilp.DeviceMappingProblem(node_bytes=node_bytes, edges=edges, nic_gbs=nic, pair_gbs=pairs)
