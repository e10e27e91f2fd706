"""Scenario files: the schema of [model], [cluster], [job], [search] and load_scenario()."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.scenario.kinds import (AttentionKernel, EpDispatcher, Fusion, GpuFamily, OptimizerSharding, Precision,
                                    SelectiveRecompute, ShardingRuntime)
from planner.plan import (Axis, BalancePolicy, CpKind, Fp8Recipe, OffloadState, OffloadTier, Recompute, Schedule, Target,
                          ZeroStage)
from planner.scenario.host import OFFLOAD_LADDER, HostSpec
from planner.scenario.network import (  # noqa: F401  (re-exported: the cluster schema lives there)
    MAX_BANDWIDTH_GBS, MAX_GPUS, FabricSpec, FabricTier, LinkSample, LinkTable, LoadBalancing, NetworkSpec,
    NodeLinkOverride, PairLinkOverride, TierKind,
)
from planner.scenario.sequences import SequencesSpec

# allow_inf_nan=False: every float a scenario takes is finite (inf bandwidth or NaN peaks would
# turn step times into 0 or NaN far from the field that caused it).
_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
GIB = 2**30  # the unit of every *_gib field

# Upper bounds on physical numbers: about three orders of magnitude above today's largest parts
# (GB200: 5,000 fp8 TFLOP/s, 186 GiB HBM at 8 TB/s; NVLink5 900 GB/s per direction). They only
# catch typos and overflow (1e300 TFLOP/s makes a step 0 s and MFU meaningless).
MAX_TFLOPS = 1e7
MAX_MEMORY_GIB = 1e6
MAX_DIMENSION = 2**24  # hidden sizes, vocabularies, sequence lengths, batch sizes


class Activation(StrEnum):
    """HF `hidden_act` names; silu means a gated (SwiGLU) MLP, as in Llama."""

    SILU = "silu"
    GELU = "gelu"
    GELU_NEW = "gelu_new"
    GELU_PYTORCH_TANH = "gelu_pytorch_tanh"
    RELU = "relu"
    RELU2 = "relu2"  # squared ReLU (So et al. 2021, Primer), Nemotron-4's and Nemotron-H's hidden_act

    @property
    def gated(self) -> bool:
        return self == Activation.SILU


class NormKind(StrEnum):
    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


class PositionEmbedding(StrEnum):
    ROPE = "rope"
    LEARNED = "learned"


class ModelSpec(BaseModel):
    """A decoder-only transformer, with Hugging Face config.json field names where they exist."""

    model_config = _FROZEN

    name: str = "custom"
    num_hidden_layers: int = Field(gt=0, le=MAX_DIMENSION)
    hidden_size: int = Field(gt=0, le=MAX_DIMENSION)
    intermediate_size: int = Field(gt=0, le=MAX_DIMENSION)
    num_attention_heads: int = Field(gt=0, le=MAX_DIMENSION)
    num_key_value_heads: int | None = Field(None, gt=0)
    head_dim: int | None = Field(None, gt=0)
    vocab_size: int = Field(gt=0, le=MAX_DIMENSION)
    hidden_act: Activation = Activation.SILU
    norm: NormKind = NormKind.RMSNORM
    position_embedding: PositionEmbedding = PositionEmbedding.ROPE
    max_position_embeddings: int = Field(4096, gt=0)
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    # MoE (Mixtral / Qwen2-MoE / DeepSeek names)
    num_local_experts: int = Field(0, ge=0)
    num_experts_per_tok: int = Field(0, ge=0)
    moe_intermediate_size: int | None = Field(None, gt=0)
    n_shared_experts: int = Field(0, ge=0)
    first_k_dense_replace: int = Field(0, ge=0, description="leading dense layers (DeepSeek)")
    moe_layer_freq: int = Field(1, ge=1, description="every k-th layer is MoE")
    capacity_factor: float | None = Field(None, gt=0, description="None = dropless")
    # Multi-head latent attention (DeepSeek-V2/V3 names)
    q_lora_rank: int | None = Field(None, gt=0)
    kv_lora_rank: int | None = Field(None, gt=0)
    qk_nope_head_dim: int | None = Field(None, gt=0)
    qk_rope_head_dim: int | None = Field(None, gt=0)
    v_head_dim: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        kv = self.kv_heads
        if self.num_attention_heads % kv:
            raise ValueError(
                f"num_key_value_heads={kv} must divide num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads and not self.uses_mla:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; set head_dim"
            )
        if self.num_local_experts and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_local_experts="
                f"{self.num_local_experts}"
            )
        if self.uses_mla and None in (self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim):
            raise ValueError("kv_lora_rank: MLA also needs qk_nope_head_dim, qk_rope_head_dim, v_head_dim")
        if self.uses_mla and self.position_embedding != PositionEmbedding.ROPE:
            raise ValueError("position_embedding: MLA (kv_lora_rank) needs rope, its decoupled key is rotary "
                             "(DeepSeek-V2 Sec. 2.1.3); set position_embedding = \"rope\"")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def is_moe_layer(self, index: int) -> bool:
        """Whether block `index` (0-based) has an MoE MLP (DeepSeek/Qwen layer rules)."""
        if not self.is_moe or index < self.first_k_dense_replace:
            return False
        return (index - self.first_k_dense_replace) % self.moe_layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return max(0, -(self.first_k_dense_replace - self.num_hidden_layers) // self.moe_layer_freq) if self.is_moe else 0


class GpuSpec(BaseModel):
    """Datasheet numbers for one accelerator (dense peaks, no sparsity)."""

    model_config = _FROZEN
    name: str
    peak_tflops: dict[Precision, Annotated[float, Field(gt=0, le=MAX_TFLOPS)]]
    memory_gib: float = Field(gt=0, le=MAX_MEMORY_GIB)
    memory_bandwidth_gbs: float = Field(gt=0, le=MAX_BANDWIDTH_GBS)
    sm_count: int | None = Field(None, gt=0)  # streaming multiprocessors (CUs): GEMM wave quantisation
    sustained_clock_ratio: float = Field(1.0, gt=0, le=1)  # sustained tensor clock / the datasheet-peak clock
    family: GpuFamily = GpuFamily.GENERIC

    @model_validator(mode="before")
    @classmethod
    def _family_from_name(cls, data: Any) -> Any:
        return GpuFamily.fill(data)

    @model_validator(mode="after")
    def _has_bf16(self) -> GpuSpec:
        """bf16 is required; a missing fp16 peak is the bf16 one (tensor cores run both at one rate:
        A100/H100/B200/MI300X datasheets), except on "cpu" (no fast fp16 GEMM, PLATFORM.md)."""
        if Precision.BF16 not in self.peak_tflops:
            raise ValueError("peak_tflops: needs at least a bf16 entry")
        if Precision.FP16 not in self.peak_tflops and self.family != GpuFamily.CPU:
            self.peak_tflops[Precision.FP16] = self.peak_tflops[Precision.BF16]
        return self


class NodeGroup(BaseModel):
    """Consecutive nodes with one GPU type (Metis, Um et al. 2024: heterogeneous GPU clusters)."""
    model_config = _FROZEN
    gpu: GpuSpec
    num_nodes: int = Field(gt=0, le=MAX_GPUS)
    intra_node_gbs: float | None = Field(None, gt=0, le=MAX_BANDWIDTH_GBS, description="this group's NVLink rate; None = network's")


class ClusterSpec(BaseModel):
    model_config = _FROZEN
    name: str = "custom"
    gpu: GpuSpec
    num_nodes: int = Field(gt=0, le=MAX_GPUS)
    gpus_per_node: int = Field(gt=0, le=MAX_GPUS)
    network: NetworkSpec
    fabric: FabricSpec | None = Field(None, description="tiered fabric; None = one NIC tier (network)")
    node_groups: list[NodeGroup] | None = Field(None, description="GPU type per run of nodes; None = all `gpu`")
    host: HostSpec = HostSpec()

    @model_validator(mode="after")
    def _overrides_in_range(self) -> ClusterSpec:
        if self.world_size > MAX_GPUS:
            raise ValueError(f"num_nodes: {self.num_nodes} x {self.gpus_per_node} GPUs exceeds {MAX_GPUS:,}; "
                             "lower num_nodes or gpus_per_node")
        domain, per_node = self.nvlink_domain, self.gpus_per_node
        # The fast tier tiles the cluster: a domain is part of one node or a whole number of nodes
        # (GB200 NVL72: 18 trays of 4), and the nodes fill whole domains.
        if per_node % domain and domain % per_node:
            raise ValueError(f"network.nvlink_domain: {domain} GPUs neither divides nor is a multiple of "
                             f"gpus_per_node={per_node}; use a divisor or a multiple of {per_node}")
        if domain > per_node and self.world_size > domain and self.world_size % domain:
            raise ValueError(f"network.nvlink_domain: {domain} GPUs does not divide the cluster's "
                             f"{self.world_size}; make num_nodes a multiple of {domain // per_node}")
        for o in self.network.node_overrides:
            if o.node >= self.num_nodes:
                raise ValueError(f"network.node_overrides: node {o.node} >= num_nodes={self.num_nodes}")
        for p in self.network.pair_overrides:
            if max(p.nodes) >= self.num_nodes or p.nodes[0] == p.nodes[1]:
                raise ValueError(f"network.pair_overrides: nodes {p.nodes} must be two distinct nodes < {self.num_nodes}")
        links = self.network.links
        if links is not None and links.num_nodes != self.num_nodes:
            raise ValueError(f"network.links: the link table has {links.num_nodes} nodes but num_nodes="
                             f"{self.num_nodes}; profile the same nodes or change num_nodes")
        if self.fabric is not None and (tier := self.fabric.nvlink.size_gpus) != self.nvlink_domain:
            raise ValueError(f"fabric.tiers: the nvlink tier has {tier} GPUs but the cluster's NVLink domain is "
                             f"{self.nvlink_domain}; make them equal")
        if self.node_groups is not None and (total := sum(g.num_nodes for g in self.node_groups)) != self.num_nodes:
            raise ValueError(f"node_groups: num_nodes add up to {total} but the cluster has num_nodes={self.num_nodes}")
        return self

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def nvlink_domain(self) -> int:
        return self.network.nvlink_domain or self.gpus_per_node

    @property
    def heterogeneous_gpus(self) -> bool:  # node groups with more than one GPU type
        return len({g.gpu.name for g in self.node_groups or []}) > 1

    def node_group_of(self) -> list[int]:
        """Per node, the index of its node group (node groups run in order over the nodes; all 0 without)."""
        return [i for i, g in enumerate(self.node_groups or [NodeGroup(gpu=self.gpu, num_nodes=self.num_nodes)])
                for _ in range(g.num_nodes)]


class OptimizerKind(StrEnum):
    ADAMW = "adamw"
    SGD = "sgd"


class OptimizerSpec(BaseModel):
    """Optimizer state per parameter, fp32 master weights included (Rajbhandari et al. 2020: K=12 for Adam)."""

    model_config = _FROZEN
    kind: OptimizerKind = OptimizerKind.ADAMW
    state_bytes_per_param: float | None = Field(None, ge=0, le=64)
    grad_bytes_per_param: float = Field(4, ge=0, le=64, description="fp32 main grads as in Megatron")
    grad_reduce_bytes: float | None = Field(
        None, gt=0, le=64, description="bytes per gradient element the data-parallel reduction moves; "
        "None = Megatron-LM's default (JobSpec.grad_reduce_bytes)")
    lr: float = Field(3e-4, gt=0)

    @property
    def state_bytes(self) -> float:
        if self.state_bytes_per_param is not None:
            return self.state_bytes_per_param
        match self.kind:
            case OptimizerKind.ADAMW:
                return 12.0  # fp32 master + m + v
            case OptimizerKind.SGD:
                return 8.0  # fp32 master + momentum


class JobSpec(BaseModel):
    model_config = _FROZEN
    seq_len: int = Field(gt=0, le=MAX_DIMENSION)
    global_batch: int = Field(gt=0, le=MAX_DIMENSION, description="sequences per optimizer step")
    precision: Precision = Precision.BF16
    optimizer: OptimizerSpec = OptimizerSpec()
    zero3_runtime: ShardingRuntime = ShardingRuntime.FSDP
    zero1_runtime: OptimizerSharding = OptimizerSharding.ZERO_REDUNDANCY
    tp_comm_overlap: bool = Field(False, description="Megatron-Core --tp-comm-overlap (Transformer Engine "
                                  "userbuffers): sequence-parallel collectives pipelined with their GEMMs")
    framework: str = "generic"  # runtime facts below come from its file where the table is silent (runtime.py)
    attention: AttentionKernel = AttentionKernel.FLASH
    dp_comm_overlap: bool = Field(True, description="gradient reduction overlapped with the backward")
    param_gather_overlap: bool = Field(True, description="ZeRO-1/2 parameter all-gather overlapped with the forward")
    pp_comm_overlap: bool = Field(False, description="pipeline p2p beside compute (False: each step waits on it)")
    cuda_graphs: bool = False  # kernels replayed from CUDA graphs: no per-kernel launch cost
    grouped_gemm: bool = False  # one grouped GEMM for a rank's experts instead of one per expert
    ep_dispatcher: EpDispatcher = EpDispatcher.ALL_TO_ALL
    fusion: Fusion = Fusion.EAGER
    selective_recompute: SelectiveRecompute = SelectiveRecompute.ATTENTION_CORE
    sequences: SequencesSpec | None = Field(None, description="variable-length documents packed into seq_len rows")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch

    @property
    def grad_reduce_bytes(self) -> float:
        """Bytes per gradient element in the data-parallel reduction.

        Default = Megatron-LM's: with bf16 (and fp8, whose master params are bf16) parameters it
        accumulates and reduces fp32 main grads (arguments.py forces accumulate_allreduce_grads_in_fp32
        for bf16); with fp16 it reduces fp16 grads unless asked otherwise.
        """
        if self.optimizer.grad_reduce_bytes is not None:
            return self.optimizer.grad_reduce_bytes
        return float(self.precision.bytes) if self.precision == Precision.FP16 else 4.0


class SearchSpace(BaseModel):
    """Optional limits on the search; every field defaults to 'anything valid'."""

    model_config = _FROZEN
    axes: list[Axis] = Field(default_factory=lambda: [Axis.DP, Axis.TP, Axis.PP, Axis.CP, Axis.EP, Axis.ETP],
                             min_length=1)
    max_tp: int | None = Field(None, ge=1)
    max_pp: int | None = Field(None, ge=1)
    max_cp: int | None = Field(None, ge=1)
    max_ep: int | None = Field(None, ge=1)
    max_vp: int = Field(4, ge=1, le=64)
    fixed: dict[Axis, int] = {}
    micro_batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_DIMENSION)]] = Field(
        default_factory=lambda: [1, 2, 4, 8], min_length=1)
    schedules: list[Schedule] = Field(
        default_factory=lambda: [Schedule.ONE_F_ONE_B, Schedule.INTERLEAVED_1F1B, Schedule.GPIPE], min_length=1
    )
    zero_stages: list[ZeroStage] = Field(default_factory=lambda: list(ZeroStage), min_length=1)
    recompute: list[Recompute] = Field(default_factory=lambda: list(Recompute), min_length=1)
    sequence_parallel: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    cp_kinds: list[CpKind] = Field(default_factory=lambda: list(CpKind), min_length=1)
    offload: list[dict[OffloadState, OffloadTier]] = Field(
        default_factory=lambda: [dict(setting) for setting in OFFLOAD_LADDER], description="offload settings tried, in order, only when no plan fits without offload")
    vocab_parallel: list[bool] = Field(default_factory=lambda: [False], min_length=1)  # opt in: [false, true]
    balance_policies: list[BalancePolicy] = Field(default_factory=lambda: list(BalancePolicy), min_length=1,
                                                  description="DP balance policies tried with [job.sequences]")
    fp8_recipes: list[Fp8Recipe] = Field(default_factory=lambda: list(Fp8Recipe), min_length=1,
                                         description="recipes tried when [job] precision = 'fp8'")
    memory_fraction: float = Field(1.0, gt=0, le=1, description="usable share of GPU memory")
    top_k: int = Field(10, ge=1, description="plans `planner search` prints (its --top overrides)")

    @model_validator(mode="after")
    def _fixed_positive(self) -> SearchSpace:
        for axis, value in self.fixed.items():
            if value < 1:
                raise ValueError(f"fixed.{axis.value}: degree must be >= 1, got {value}")
        return self


class Scenario(BaseModel):
    model_config = _FROZEN
    name: str = "scenario"
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    search: SearchSpace = SearchSpace()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """reports/<name> is the default output dir: the name must stay one entry inside reports/."""
        if name.strip() in ("", ".", "..") or name.startswith(".") or any(c in "/\\" or ord(c) < 32 for c in name):
            raise ValueError(f"{name!r} is not a plain name (it names the output dir reports/<name>); "
                             "use letters, digits, '-', '_' or '.', without '/' and not starting with '.'")
        return name

    def plan_target(self) -> Target:
        """The numbers a plan must fit (planner.plan.problems reads them, never this schema)."""
        m = self.model
        return Target(world_size=self.cluster.world_size, num_layers=m.num_hidden_layers,
                      num_heads=m.num_attention_heads, kv_heads=m.kv_heads, seq_len=self.job.seq_len,
                      global_batch=self.job.global_batch, num_experts=m.num_local_experts if m.is_moe else 0,
                      expert_ffn=m.expert_intermediate_size if m.is_moe else 0,
                      num_moe_layers=m.num_moe_layers if m.is_moe else 0,
                      gpus_per_node=self.cluster.gpus_per_node,
                      fp8=self.job.precision == Precision.FP8, documents=self.job.sequences is not None)

    @model_validator(mode="after")
    def _fixed_degrees_fit(self) -> Scenario:
        world = self.cluster.world_size
        fixed = {a: d for a, d in self.search.fixed.items() if a in (Axis.DP, Axis.TP, Axis.PP, Axis.CP)}
        product = 1
        for degree in fixed.values():
            product *= degree
        if world % product:
            names = "*".join(a.value for a in fixed)
            raise ValueError(
                f"search.fixed: {names} = {product} does not divide the cluster's {world} GPUs; "
                "change the fixed degrees or num_nodes"
            )
        if Axis.EP in self.search.fixed and self.model.is_moe and self.model.num_local_experts % self.search.fixed[Axis.EP]:
            raise ValueError(
                f"search.fixed: ep={self.search.fixed[Axis.EP]} does not divide "
                f"num_local_experts={self.model.num_local_experts}"
            )
        return self
