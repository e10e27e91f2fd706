"""TOML scenario files (and already-parsed tables) -> a validated Scenario.

Presets and HF configs are resolved here, so the schema in spec.py stays a leaf that the preset
modules import, never the reverse.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.errors import ScenarioError, UserError, one_line, read_text
from planner.scenario import clusters, models, runtime
from planner.scenario.spec import ModelSpec, PositionEmbedding, Scenario

# The traced graph keeps every op of every block (graph/canonical.py relabels one traced block per
# position; a MoE block runs its experts one after another, ~5 ops each: the GEMMs, activation,
# gate product). Peak resident memory measured on this machine (ru_maxrss): ~4 KB per op of the
# whole graph (tiny-moe with 2,048 / 8,192 experts: 3.3 / 2.5 KB), ~13 KB per op of the one block
# being traced (its records and meta tensors), ~0.4 MB per block (llama3-70b: 80 blocks, 4,254
# ops, 33 MB). DeepSeek-V3 (61 blocks, 79,632 ops) needs ~0.4 GB; past the budget, 5x that, a
# model is refused before tracing.
GRAPH_BYTES_PER_OP, TRACE_BYTES_PER_OP, GRAPH_BYTES_PER_BLOCK, OPS_PER_EXPERT, OPS_PER_BLOCK = 4000, 13_000, 400_000, 5, 60
MAX_GRAPH_BYTES = 2 * 2**30


def load_scenario(path: str | Path) -> Scenario:
    """Read a TOML scenario, resolve presets and HF configs, validate; ScenarioError on any problem."""
    path = Path(path)
    text = read_text(path, what="scenario")  # a UTF-8 BOM (Windows editors) is stripped
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"not valid TOML ({err})", file=path, fix="fix the syntax at that line") from None
    return scenario_from_dict(raw, base_dir=path.parent, name=path.stem, source=str(path))


def scenario_from_dict(raw: dict[str, Any], *, base_dir: Path, name: str, source: str) -> Scenario:
    """Validate an already-parsed scenario table (used by load_scenario and the embedded default)."""
    for section in ("model", "cluster", "job"):
        if section not in raw:
            raise ScenarioError(f"{source}: missing [{section}] section; add it (see scenarios/*.toml)")
        if not isinstance(raw[section], dict):
            raise ScenarioError(f"must be a table, not {type(raw[section]).__name__}", file=source, field=section,
                                fix=f"write a [{section}] section (see scenarios/*.toml)")
    data = dict(raw)
    data.setdefault("name", name)
    try:
        data["model"] = models.resolve_model_table(data["model"], base_dir=base_dir)
        data["cluster"] = _read_link_table(clusters.resolve_cluster_table(data["cluster"]), base_dir=base_dir)
        data["job"] = runtime.runtime_job_fields(data["job"])
        scenario = _positions_cover_the_sequence(Scenario.model_validate(data))
        problem = graph_size_problem(scenario.model)
        if problem:
            raise ValueError(problem)
        return scenario
    except ValidationError as err:
        raise ScenarioError(one_line(err), file=source) from None
    except UserError as err:  # already names its own file (an HF config) or field
        raise ScenarioError(str(err), file=None if err.file else source) from None
    except ValueError as err:
        raise ScenarioError(str(err), file=source) from None


def _positions_cover_the_sequence(sc: Scenario) -> Scenario:
    """Learned positions stop at their table (refused); RoPE has no hard limit, so a sequence
    longer than the model was trained at only warns (quality, not feasibility)."""
    m, seq = sc.model, sc.job.seq_len
    if seq > m.max_position_embeddings:
        if m.position_embedding == PositionEmbedding.LEARNED:
            raise ValueError(f"job.seq_len: {seq} exceeds the learned position table (max_position_embeddings="
                             f"{m.max_position_embeddings}); shorten the sequence or enlarge the table")
        warnings.warn(f"job.seq_len: {seq} exceeds max_position_embeddings={m.max_position_embeddings} of "
                      f"{m.name}; RoPE extends, but the model was not trained at this length", stacklevel=3)
    return sc


def graph_size_problem(spec: ModelSpec) -> str | None:
    """Why the model's traced graph would not fit a sane memory budget (None when it does): the
    graph, and every search over it, holds each op of each block, O(layers x experts)."""
    expert_ops = OPS_PER_EXPERT * spec.num_local_experts
    experts = spec.num_moe_layers * expert_ops * GRAPH_BYTES_PER_OP + (expert_ops * TRACE_BYTES_PER_OP if spec.is_moe else 0)
    blocks = spec.num_hidden_layers * (OPS_PER_BLOCK * GRAPH_BYTES_PER_OP + GRAPH_BYTES_PER_BLOCK)
    need = experts + blocks
    if need <= MAX_GRAPH_BYTES:
        return None
    field = "num_local_experts" if experts > blocks else "num_hidden_layers"
    return (f"model.{field}: {spec.num_hidden_layers} layers with {spec.num_local_experts} experts would need a "
            f"~{need / 2**30:.0f} GiB operator graph (over {MAX_GRAPH_BYTES // 2**30} GiB); use fewer layers or experts")


def _read_link_table(cluster: dict[str, Any], *, base_dir: Path) -> dict[str, Any]:
    """`[cluster.network] links = "profiles/X.json"`: the measured link table of that profile."""
    network = cluster.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("links"), str):
        return cluster
    path = (base_dir / network["links"]).resolve()
    if not path.is_file():
        raise ValueError(f"cluster.network.links: profile {network['links']} not found; run "
                         "`planner profile --links --out` first or fix the path")
    table = json.loads(path.read_text()).get("links")
    if table is None:
        raise ValueError(f"cluster.network.links: profile {network['links']} has no link table; "
                         "re-profile with `planner profile --links`")
    return cluster | {"network": network | {"links": table}}
