"""ILP post-pass of the search: uneven stage partitions for the top plans, expert placement and
device mapping for the best one. The cost model re-prices every tuned plan and is the judge.
"""

from __future__ import annotations


from planner import cost
from planner.graph import LayerKind
from planner.plan import Axis, Plan, Recompute
from planner.search import ilp
from planner.search.ilp import routing as ex
from planner.search.pricer import Pricer
from planner.search.hetero import speed_partitions
from planner.search.mapping import map_devices, vary_rank_orders
from planner.search.result import Candidate, PartitionSummary, PlacementSummary, TuneResult

_PARTITION_TOP = 2  # top plans with pp > 1 that get the stage-partition ILP
_PARTITION_LIMIT_S = 3.0  # a cap: the GPT-3 and 405B searches' partitions are proven in 0.1-1.4 s
_PARTITION_WINDOW = 2  # chunks a layer may move from the even split
_PLACEMENT_LIMIT_S = 1.5  # greedy + a fixed local-search budget take ~1 s on the DeepSeek-V3 search
_TRACE_TOKENS = 16384  # tokens drawn for a synthetic trace; counts are scaled to the step


def tune_top(run: Pricer, *, routing: ex.RoutingStats | None) -> TuneResult:
    fitting = sorted((c for c in run.candidates if c.fits), key=lambda c: c.estimate.step_time_s)
    staged = [c for c in fitting if c.plan.dims.pp > 1][:_PARTITION_TOP]
    partition = None
    for cand in staged:
        summary = _repartition(run, cand)
        partition = partition or summary
    speed_partitions(run)
    vary_rank_orders(run)
    best = min((c for c in run.candidates if c.fits), key=lambda c: c.estimate.step_time_s, default=None)
    moe = _place(run, best, routing) if best is not None and best.plan.dims.ep > 1 else None
    best = min((c for c in run.candidates if c.fits), key=lambda c: c.estimate.step_time_s, default=None)
    mapping = map_devices(run, best) if best is not None else None
    return TuneResult(partition=partition, moe=moe, device_mapping=mapping)


def _has_ends(run: Pricer) -> bool:
    layers = run.graph.layers
    return layers[0].kind == LayerKind.EMBEDDING and layers[-1].kind == LayerKind.HEAD


def partition_problem(run: Pricer, cand: Candidate) -> ilp.StagePartitionProblem:
    """Per-layer time (cost.layer_compute_s, recompute included) and memory of a plan, the memory
    limit calibrated so the even split reproduces the cost model's heaviest stage."""
    plan, job, graph = cand.plan, run.scenario.job, run.graph
    d = plan.dims
    split = d.tp * d.cp
    times = cost.layer_compute_s(graph, plan, hw=run.hw, job=job)
    per_param = job.precision.bytes + job.optimizer.grad_bytes_per_param + job.optimizer.state_bytes / (
        d.dp * d.cp if plan.zero_stage else 1)
    static = tuple(l.num_params * per_param / d.tp for l in graph.layers)
    scale = plan.micro_batch_size / graph.sample_batch / split
    act = tuple(_saved(l, plan.recompute) * scale for l in graph.layers)
    m = plan.num_micro_batches(job.global_batch)
    inflight = tuple(float(min(d.pp - r, m)) for r in range(d.pp))
    problem = ilp.StagePartitionProblem(layer_time_s=times, layer_static_bytes=static, layer_activation_bytes=act,
                                        num_ranks=d.pp, virtual_stages=plan.virtual_stages, num_micro_batches=m,
                                        rank_inflight=inflight, memory_limit_bytes=float("inf"))
    even = _layers_per_chunk(run, plan)
    mine = problem.evaluate(even)[2]
    theirs = [sum(t.values()) for t in cand.estimate.stage_memory]
    unmodelled = max(t - m_ for t, m_ in zip(theirs, mine))
    limit = cand.estimate.memory_capacity_bytes * run.scenario.search.memory_fraction - unmodelled
    return ilp.StagePartitionProblem(layer_time_s=times, layer_static_bytes=static, layer_activation_bytes=act,
                                     num_ranks=d.pp, virtual_stages=plan.virtual_stages, num_micro_batches=m,
                                     rank_inflight=inflight, memory_limit_bytes=limit, window=_PARTITION_WINDOW)


def _saved(layer, recompute: Recompute) -> float:
    match recompute:
        case Recompute.FULL:
            return layer.input_bytes
        case Recompute.SELECTIVE:
            return layer.saved_bytes_selective
        case Recompute.NONE:
            return layer.saved_bytes_flash


def _layers_per_chunk(run: Pricer, plan: Plan) -> list[int]:
    blocks = plan.stage_blocks(len(run.graph.blocks))
    return [b + (i == 0) + (i == len(blocks) - 1) for i, b in enumerate(blocks)]


def _repartition(run: Pricer, cand: Candidate) -> PartitionSummary | None:
    if not _has_ends(run):
        return None
    problem = partition_problem(run, cand)
    result = ilp.partition_stages(problem, time_limit_s=_PARTITION_LIMIT_S)
    if result is None:
        return None
    counts = list(result.layers_per_chunk)
    counts[0] -= 1
    counts[-1] -= 1
    if counts == cand.plan.stage_blocks(len(run.graph.blocks)):
        return _partition_summary(cand, counts, result, None)
    tuned = run.cost(cand.plan.model_copy(update={"blocks_per_stage": counts}))
    return _partition_summary(cand, counts, result, tuned)


def _partition_summary(cand: Candidate, counts: list[int], result: ilp.StagePartition,
                       tuned: Candidate | None) -> PartitionSummary:
    return PartitionSummary(
        plan=cand.plan.describe(), blocks_per_stage=counts, status=result.solve.status.value,
        gap=result.solve.gap, solve_s=result.solve.seconds, even_step_time_s=cand.estimate.step_time_s,
        uneven_step_time_s=tuned.estimate.step_time_s if tuned is not None else cand.estimate.step_time_s,
        uneven_fits=tuned.fits if tuned is not None else cand.fits)


def placement_problem(run: Pricer, plan: Plan, routing: ex.RoutingStats | None) -> ilp.ExpertPlacementProblem:
    """Per-token costs from the graph's MoE stats and the cluster; a Zipf trace when none given."""
    model, cluster, job = run.scenario.model, run.scenario.cluster, run.scenario.job
    d = plan.dims
    moe = next(l.moe for l in run.graph.layers if l.moe is not None)
    edp = plan.dims.edp
    tokens = job.tokens_per_step / max(edp, 1)
    if routing is None:
        routing = ex.zipf_routing(num_layers=model.num_moe_layers, num_experts=model.num_local_experts,
                                  tokens=_TRACE_TOKENS, top_k=model.num_experts_per_tok, seed=0)
        scale = tokens / _TRACE_TOKENS
        routing = ex.RoutingStats(expert_tokens=routing.expert_tokens * scale, affinity=routing.affinity * scale)
    ex.check_matches(routing, num_layers=model.num_moe_layers, num_experts=model.num_local_experts)
    peak = run.hw.peak_flops(job.precision)
    hidden_bytes = model.hidden_size * job.precision.bytes
    topo = ex.Topology(num_ranks=d.ep, ranks_per_node=max(1, min(d.ep, cluster.nvlink_domain // d.etp)),
                       compute_s_per_token=3 * moe.expert_fwd_flops_per_token / d.etp / peak,
                       intra_s_per_token=hidden_bytes / (cluster.network.intra_node_gbs * 1e9),
                       inter_s_per_token=hidden_bytes / (cluster.network.inter_node_gbs * 1e9))
    return ilp.ExpertPlacementProblem(routing=routing, topology=topo)


def _place(run: Pricer, best: Candidate, routing: ex.RoutingStats | None) -> PlacementSummary:
    """Solve the placement, then let the cost model price it on the step's scale: the unplaced
    twin (contiguous experts, as the executor runs a plan without placement) and the placed plan
    both carry the trace's per-expert token counts (Plan.expert_load), so the difference between
    them is what placement saves in the all-to-all and the expert GEMMs (cost/experts.py)."""
    problem = placement_problem(run, best.plan, routing)
    result = ilp.place_experts(problem, time_limit_s=_PLACEMENT_LIMIT_S)
    load = problem.routing.expert_tokens.tolist()
    twin = run.cost(best.plan.model_copy(update={"expert_load": load, "expert_placement": None}))
    placed = run.cost(twin.plan.model_copy(update={"expert_placement": result.ranks}))
    ep_s = lambda c: c.estimate.time_breakdown_s.get("ep", 0.0)  # noqa: E731 - EP seconds per step
    return PlacementSummary(
        expert_tokens=problem.routing.expert_tokens.round().tolist(), method=result.method,
        status=result.solve.status.value, gap=result.solve.gap, solve_s=result.solve.seconds,
        cost_s=result.cost.total_s, round_robin_s=result.round_robin.total_s,
        step_time_s=placed.estimate.step_time_s, unplaced_step_time_s=twin.estimate.step_time_s,
        all_to_all_saved_s=ep_s(twin) - ep_s(placed),
        saved_s=twin.estimate.step_time_s - placed.estimate.step_time_s, synthetic_trace=routing is None,
        ep=best.plan.dims.ep, rank_order=[a.value for a in best.plan.rank_order], expert_axis=Axis.EP.value)
