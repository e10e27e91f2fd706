"""MoE routing traces (per-expert loads, inter-layer expert affinity) for planner.search.ilp.solver.place_experts."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from executor.mesh import Meshes
from planner.plan import Axis
from planner.scenario import ModelSpec
from planner.graph import MoE


def _local_records(modules: list[nn.Module]) -> dict[int, tuple[list[int], torch.Tensor | None]]:
    records = {}
    for module in modules:
        for key, block in getattr(module, "layers", {}).items():
            moe = getattr(block, "moe", None)
            if isinstance(moe, MoE):
                records[int(key)] = (moe.expert_tokens.tolist(), moe.last_indices)
    return records


def _multi_hot(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[T, k] expert ids -> [T, E] 0/1 (a token counts once per expert it visits)."""
    return F.one_hot(indices.long(), num_experts).sum(dim=1).clamp(max=1).long()


def routing_trace(modules: list[nn.Module], *, meshes: Meshes, spec: ModelSpec) -> dict | None:
    """Gather every rank's records; loads summed over ranks, affinity over consecutive MoE layers.

    Affinity uses each rank's last routed micro-batch: matrix[a][b] counts tokens sent to expert
    a in layer i and to expert b in layer j (Sec. "expert affinity" of Exflow, Yao et al. 2024).
    Tokens are matched across pipeline stages by their (dp, cp) shard; tp copies count once.
    """
    if not spec.is_moe:
        return None
    stream = (meshes.local_rank(Axis.DP), meshes.local_rank(Axis.CP), meshes.local_rank(Axis.TP))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (stream, _local_records(modules)))
    e = spec.num_local_experts
    loads: dict[int, torch.Tensor] = {}
    streams: dict[tuple[int, int], dict[int, torch.Tensor]] = {}
    for (dp, cp, tp), records in gathered:
        if tp:
            continue
        for layer, (counts, last) in records.items():
            loads[layer] = loads.get(layer, torch.zeros(e, dtype=torch.long)) + torch.tensor(counts)
            if last is not None:
                streams.setdefault((dp, cp), {})[layer] = _multi_hot(last, e)
    moe_layers = sorted(loads)
    affinity = []
    for i, j in zip(moe_layers, moe_layers[1:]):
        pairs = [s[i].T @ s[j] for s in streams.values() if i in s and j in s]
        if pairs:
            affinity.append({"from_layer": i, "to_layer": j, "matrix": torch.stack(pairs).sum(0).tolist()})
    return {"num_experts": e, "layers": [{"layer": i, "expert_tokens": loads[i].tolist()} for i in moe_layers],
            "affinity": affinity}
