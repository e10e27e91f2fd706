"""The report's MoE section: expert placement heat map and all-to-all load per EP rank.

The all-to-all dispatch of one MoE layer sends every routed token to the rank hosting its
expert, so the tokens an EP rank receives are the sum of its experts' loads; the slowest
(most loaded) rank sets the layer's all-to-all time (MoETuner, ExFlow). Round-robin puts
expert e on rank e mod ep.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.report import figures as figs
from planner.report.figures import Figure
from planner.plan import Plan
from planner.scenario import Scenario


def placement_matrix(plan: Plan, *, num_experts: int, num_layers: int) -> np.ndarray:
    """[layer, expert] -> EP rank: the plan's placement, or contiguous blocks when it has none."""
    if plan.expert_placement is not None:
        return np.asarray(plan.expert_placement, dtype=np.int64)
    contiguous = np.arange(num_experts) // (num_experts // plan.dims.ep)
    return np.tile(contiguous, (num_layers, 1))


def rank_loads(placement: np.ndarray, expert_tokens: np.ndarray, *, ep: int) -> np.ndarray:
    """[layer, rank] tokens received by each EP rank in each layer's dispatch."""
    loads = np.zeros((placement.shape[0], ep))
    for layer in range(placement.shape[0]):
        np.add.at(loads[layer], placement[layer], expert_tokens[layer])
    return loads


def expert_tokens_of(moe: dict[str, Any] | None, *, num_layers: int) -> np.ndarray | None:
    """Per-layer expert loads from result.json's `moe` entry (routing-trace layout), if any."""
    if not moe:
        return None
    layers = moe.get("expert_tokens") or [entry["expert_tokens"] for entry in moe.get("layers", [])]
    if not layers:
        return None
    tokens = np.asarray(layers, dtype=float)
    if len(tokens) != num_layers:  # a trace of fewer layers: reuse it cyclically
        tokens = tokens[np.arange(num_layers) % len(tokens)]
    return tokens


def moe_section(result: dict[str, Any], scenario: Scenario, best: dict[str, Any], charts: dict[str, Figure],
                *, routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Placement heat map and dispatch load per rank; loads come from the search result's `moe`
    entry, else from the executor's measured routing trace (measurement.json `routing`)."""
    model = scenario.model
    plan = Plan.model_validate(best["plan"])
    out: dict[str, Any] = {"ep": plan.dims.ep, "num_experts": model.num_local_experts,
                           "custom": plan.expert_placement is not None, "loads": None, "ilp": _ilp_summary(result)}
    if plan.dims.ep == 1:
        return out
    layer_ids = [i for i in range(model.num_hidden_layers) if model.is_moe_layer(i)]
    placement = placement_matrix(plan, num_experts=model.num_local_experts, num_layers=len(layer_ids))
    charts["experts"] = figs.expert_placement(placement.tolist(), layer_ids=layer_ids)
    tokens = expert_tokens_of(result.get("moe") or routing, num_layers=len(layer_ids))
    if tokens is None:
        return out
    rr = np.tile(np.arange(model.num_local_experts) % plan.dims.ep, (len(layer_ids), 1))
    planned, robin = rank_loads(placement, tokens, ep=plan.dims.ep), rank_loads(rr, tokens, ep=plan.dims.ep)
    charts["a2a"] = figs.per_rank_comparison(
        {"this placement": planned.sum(0).tolist(), "round-robin": robin.sum(0).tolist()},
        title="All-to-all tokens received per EP rank (sum over MoE layers)", y="tokens")
    bottleneck, rr_bottleneck = planned.max(1).sum(), robin.max(1).sum()
    out["loads"] = {"bottleneck_tokens": float(bottleneck), "round_robin_bottleneck_tokens": float(rr_bottleneck),
                    "saving": 1 - bottleneck / rr_bottleneck if rr_bottleneck else 0.0}
    return out


def _ilp_summary(result: dict[str, Any]) -> dict[str, Any] | None:
    """The search's expert-placement solve (ilp_experts.place_experts), when it ran."""
    moe = result.get("moe") or {}
    if "round_robin_s" not in moe:
        return None
    keys = ("method", "status", "gap", "solve_s", "cost_s", "round_robin_s", "all_to_all_saved_s", "saved_s",
            "step_time_s", "unplaced_step_time_s", "synthetic_trace")
    return {k: moe.get(k) for k in keys}
