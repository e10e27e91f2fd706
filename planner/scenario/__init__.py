"""Scenario: the user's model, cluster, job and search space, from TOML, presets or HF configs.

spec.py is the schema (a leaf); models.py and clusters.py are the cited presets; load.py reads files.
"""

from planner.errors import ScenarioError, one_line
from planner.scenario.clusters import CLUSTER_PRESETS, FABRIC_PRESETS, GPU_PRESETS, cluster_preset, fabric_preset, gpu_preset
from planner.scenario.load import graph_size_problem, load_scenario, scenario_from_dict
from planner.scenario.kinds import GpuFamily
from planner.scenario.models import PRESETS, count_params, load_hf_config, model_preset
from planner.scenario.host import HostLink, HostSpec
from planner.scenario.sequences import DATA_MIXES, BalancePolicy, LengthBin, Packing, RankLoads, SequencesSpec
from planner.scenario.runtime import FrameworkRuntime, frameworks
from planner.scenario.spec import (
    GIB,
    Activation,
    AttentionKernel,
    EpDispatcher,
    Fusion,
    ClusterSpec,
    FabricSpec,
    FabricTier,
    GpuSpec,
    JobSpec,
    LinkSample,
    LinkTable,
    LoadBalancing,
    ModelSpec,
    NetworkSpec,
    NodeGroup,
    NodeLinkOverride,
    NormKind,
    OptimizerKind,
    OptimizerSharding,
    OptimizerSpec,
    PairLinkOverride,
    PositionEmbedding,
    Precision,
    Scenario,
    SearchSpace,
    SelectiveRecompute,
    ShardingRuntime,
    TierKind,
)

__all__ = [
    "CLUSTER_PRESETS", "FABRIC_PRESETS", "GIB", "GPU_PRESETS", "GpuFamily", "PRESETS", "Activation", "AttentionKernel",
    "ClusterSpec", "EpDispatcher", "FabricSpec", "FabricTier", "Fusion", "GpuSpec", "JobSpec", "LinkSample", "LinkTable",
    "LoadBalancing", "NodeGroup", "TierKind", "fabric_preset",
    "ModelSpec", "NetworkSpec", "NodeLinkOverride", "NormKind", "OptimizerKind", "OptimizerSharding", "OptimizerSpec",
    "PairLinkOverride", "PositionEmbedding", "Precision", "Scenario", "ScenarioError", "SearchSpace", "SelectiveRecompute",
    "FrameworkRuntime", "ShardingRuntime", "cluster_preset", "count_params", "frameworks", "gpu_preset", "graph_size_problem", "load_hf_config",
    "load_scenario",
    "model_preset", "one_line", "scenario_from_dict",
    "DATA_MIXES", "BalancePolicy", "HostLink", "HostSpec", "LengthBin", "Packing", "RankLoads", "SequencesSpec",
]
