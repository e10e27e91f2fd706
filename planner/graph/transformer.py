"""The canonical decoder-only transformer: traced for predictions, run by the executor.

One definition serves both sides, so the FLOPs the planner predicts are the FLOPs the executor
spends. Module names follow torchtitan (`tok_embeddings`, `layers.<i>.attention.wq`, ...) so
DTensor plans address them by FQN. `layers` is an nn.ModuleDict: a pipeline stage deletes keys
and the remaining FQNs stay stable. Any of `tok_embeddings`, `norm`, `output` may be set to None
by a pipeline stage; `forward` then takes / returns hidden states (torchtitan's pattern).
Shapes: B batch, S sequence, H heads, D head dim, E experts, T = B*S tokens.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from planner.scenario import Activation, ModelSpec, NormKind, PositionEmbedding

INIT_STD = 0.02  # GPT-2 / Megatron default
NORM_EPS = 1e-5


def make_norm(spec: ModelSpec, dim: int) -> nn.Module:
    match spec.norm:
        case NormKind.RMSNORM:
            return nn.RMSNorm(dim, eps=NORM_EPS)
        case NormKind.LAYERNORM:
            return nn.LayerNorm(dim, eps=NORM_EPS)


def activation(kind: Activation, x: torch.Tensor) -> torch.Tensor:
    match kind:
        case Activation.SILU:
            return F.silu(x)
        case Activation.GELU:
            return F.gelu(x)
        case Activation.GELU_NEW | Activation.GELU_PYTORCH_TANH:
            return F.gelu(x, approximate="tanh")
        case Activation.RELU:
            return F.relu(x)
        case Activation.RELU2:
            return F.relu(x).square()


def rope_table(seq_len: int, dim: int, theta: float) -> torch.Tensor:
    """[seq_len, dim/2, 2] (cos, sin) for rotate-half RoPE (Su et al. 2021), fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the last dim of x [B, H, S, D] by freqs [S, D/2, 2], cast to x.dtype first."""
    cos, sin = freqs[..., 0].to(x.dtype), freqs[..., 1].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def expand_kv(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, num_heads, S, D] for cores that need equal head counts (GQA/MQA)."""
    return t if t.shape[1] == num_heads else t.repeat_interleave(num_heads // t.shape[1], dim=1)


class CausalAttention(nn.Module):
    """softmax(QK^T / sqrt(d)) V with a causal mask; k/v may have fewer heads than q (GQA).

    Kept as a module (`attention.core`) so context parallelism can swap in ring attention.
    """

    def __init__(self, dropout_p: float) -> None:
        super().__init__()
        self.dropout_p = dropout_p

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class Attention(nn.Module):
    """MHA / GQA / MQA; local heads come from weight shapes so TP-sharded linears just work."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.attn_head_dim
        self.head_dim = d
        self.use_rope = spec.position_embedding == PositionEmbedding.ROPE
        self.wq = nn.Linear(h, spec.num_attention_heads * d, bias=spec.attention_bias)
        self.wk = nn.Linear(h, spec.kv_heads * d, bias=spec.attention_bias)
        self.wv = nn.Linear(h, spec.kv_heads * d, bias=spec.attention_bias)
        self.wo = nn.Linear(spec.num_attention_heads * d, h, bias=spec.attention_bias and spec.mlp_bias)
        self.core = CausalAttention(spec.attention_dropout)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        out = self.core(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class MLAttention(nn.Module):
    """DeepSeek-V2/V3 multi-head latent attention (arXiv 2405.04434 Sec. 2.1), training form.

    Queries optionally go through a low-rank `wq_a -> q_norm -> wq_b`; keys and values are
    rebuilt from a compressed latent `wkv_a -> kv_norm -> wkv_b` plus a shared RoPE key.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, heads = spec.hidden_size, spec.num_attention_heads
        self.nope_dim, self.rope_dim, self.v_dim = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.kv_rank = spec.kv_lora_rank
        qk_dim = self.nope_dim + self.rope_dim
        if spec.q_lora_rank:
            self.wq_a = nn.Linear(h, spec.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(spec.q_lora_rank, eps=NORM_EPS)
            self.wq_b = nn.Linear(spec.q_lora_rank, heads * qk_dim, bias=False)
        else:
            self.wq = nn.Linear(h, heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(h, self.kv_rank + self.rope_dim, bias=False)
        self.kv_norm = nn.RMSNorm(self.kv_rank, eps=NORM_EPS)
        self.wkv_b = nn.Linear(self.kv_rank, heads * (self.nope_dim + self.v_dim), bias=False)
        self.wo = nn.Linear(heads * self.v_dim, h, bias=False)
        self.core = CausalAttention(spec.attention_dropout)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wq"):
            return self.wq(x)
        return self.wq_b(self.q_norm(self.wq_a(x)))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self._queries(x).view(b, s, -1, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_pe = self.wkv_a(x).split([self.kv_rank, self.rope_dim], dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(b, s, -1, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(1), freqs).expand(-1, q.shape[1], -1, -1)
        q = torch.cat((q_nope, apply_rope(q_pe, freqs)), dim=-1)
        k = torch.cat((k_nope, k_pe), dim=-1)
        out = self.core(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """Gated (SwiGLU: w2(silu(w1 x) * w3 x), Shazeer 2020) or plain (w2(act(w1 x))) MLP."""

    def __init__(self, spec: ModelSpec, hidden_dim: int) -> None:
        super().__init__()
        h, bias = spec.hidden_size, spec.mlp_bias
        self.act = spec.hidden_act
        self.w1 = nn.Linear(h, hidden_dim, bias=bias)
        self.w3 = nn.Linear(h, hidden_dim, bias=bias) if spec.hidden_act.gated else None
        self.w2 = nn.Linear(hidden_dim, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = activation(self.act, self.w1(x))
        if self.w3 is not None:
            hidden = hidden * self.w3(x)
        return self.w2(hidden)


class GroupedExperts(nn.Module):
    """E routed experts as stacked weights: w1/w3 [E, ffn, h], w2 [E, h, ffn]."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        e, h, ffn = spec.num_local_experts, spec.hidden_size, spec.expert_intermediate_size
        self.act = spec.hidden_act
        self.w1 = nn.Parameter(torch.empty(e, ffn, h))
        self.w3 = nn.Parameter(torch.empty(e, ffn, h)) if spec.hidden_act.gated else None
        self.w2 = nn.Parameter(torch.empty(e, h, ffn))

    def forward(self, x_sorted: torch.Tensor, tokens_per_expert: list[int]) -> torch.Tensor:
        """x_sorted [sum(tokens_per_expert), h], grouped by expert in order; one loop step each."""
        outs = []
        for e, chunk in enumerate(x_sorted.split(tokens_per_expert)):
            hidden = activation(self.act, chunk @ self.w1[e].T)
            if self.w3 is not None:
                hidden = hidden * (chunk @ self.w3[e].T)
            outs.append(hidden @ self.w2[e].T)
        return torch.cat(outs) if outs else x_sorted


class MoE(nn.Module):
    """Top-k routed experts (softmax router, renormalised for k > 1) plus optional shared experts.

    capacity_factor None = dropless; otherwise each expert keeps at most
    ceil(cf * T * k / E) token slots and drops the rest (Fedus et al. 2021, Switch Transformer).
    On the meta device routing has no data: tokens are spread evenly over experts.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        e = spec.num_local_experts
        self.num_experts, self.top_k = e, spec.num_experts_per_tok
        self.capacity_factor = spec.capacity_factor
        self.router = nn.Linear(spec.hidden_size, e, bias=False)
        self.experts = GroupedExperts(spec)
        shared_dim = spec.expert_intermediate_size * spec.n_shared_experts
        self.shared_experts = FeedForward(spec, shared_dim) if spec.n_shared_experts else None
        self.record_routing = False
        self.expert_tokens = torch.zeros(e, dtype=torch.long)  # cumulative, when recording
        self.last_indices: torch.Tensor | None = None  # [T, k] of the last forward, when recording

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, h] -> (weights [T, k] in x.dtype, expert indices [T, k])."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), indices

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def _balanced_counts(self, num_slots: int, capacity: int | None) -> list[int]:
        base, extra = divmod(num_slots, self.num_experts)
        counts = [base + (e < extra) for e in range(self.num_experts)]
        return counts if capacity is None else [min(c, capacity) for c in counts]

    def _plan_dispatch(self, indices: torch.Tensor, capacity: int | None) -> tuple[torch.Tensor, list[int]]:
        """Slot order grouped by expert (overflow beyond capacity dropped) and tokens per expert."""
        flat = indices.flatten()
        order = flat.argsort(stable=True)
        if flat.device.type == "meta":
            counts = self._balanced_counts(flat.numel(), capacity)
            return order[: sum(counts)], counts
        counts_t = torch.bincount(flat, minlength=self.num_experts)
        if capacity is not None:
            starts = counts_t.cumsum(0) - counts_t
            rank = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
            order = order[rank < capacity]
            counts_t = counts_t.clamp(max=capacity)
        return order, counts_t.tolist()

    def _record(self, indices: torch.Tensor, counts: list[int]) -> None:
        self.expert_tokens = self.expert_tokens + torch.tensor(counts, dtype=torch.long)
        self.last_indices = indices.detach().cpu()

    def dispatch(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Route [T, h] tokens and order their expert slots: (weights, indices, order, counts).

        Shared with the executor's expert-parallel forward, which moves the ordered slots
        between ranks before the experts and back before combine().
        """
        weights, indices = self.route(flat)
        order, counts = self._plan_dispatch(indices, self.capacity(flat.shape[0]))
        if self.record_routing:
            self._record(indices, counts)
        return weights, indices, order, counts

    def combine(self, flat: torch.Tensor, expert_out: torch.Tensor, *, weights: torch.Tensor,
                order: torch.Tensor) -> torch.Tensor:
        """Weight each slot's expert output, sum the slots back into their tokens, add shared experts."""
        expert_out = expert_out * weights.flatten()[order].unsqueeze(-1)
        out = torch.zeros_like(flat).index_add(0, order // self.top_k, expert_out)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, _, order, counts = self.dispatch(flat)
        expert_out = self.experts(flat[order // self.top_k], counts)
        return self.combine(flat, expert_out, weights=weights, order=order).view(shape)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross entropy, computed in fp32 ([B, S, V] logits, [B, S] labels)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + drop(attn(norm(x))); out = h + drop(mlp(norm(h)))."""

    def __init__(self, spec: ModelSpec, index: int) -> None:
        super().__init__()
        self.attention_norm = make_norm(spec, spec.hidden_size)
        self.attention = MLAttention(spec) if spec.uses_mla else Attention(spec)
        self.ffn_norm = make_norm(spec, spec.hidden_size)
        if spec.is_moe_layer(index):
            self.moe = MoE(spec)
        else:
            self.feed_forward = FeedForward(spec, spec.intermediate_size)
        self.dropout = nn.Dropout(spec.hidden_dropout)

    @property
    def mlp(self) -> nn.Module:
        return self.moe if hasattr(self, "moe") else self.feed_forward

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.dropout(self.attention(self.attention_norm(x), freqs))
        return h + self.dropout(self.mlp(self.ffn_norm(h)))


class Transformer(nn.Module):
    """Decoder-only LM built from a ModelSpec; cheap to build under torch.device("meta")."""

    def __init__(self, spec: ModelSpec, *, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.spec, h = spec, spec.hidden_size
        self.tok_embeddings = nn.Embedding(spec.vocab_size, h)
        if spec.position_embedding == PositionEmbedding.LEARNED:
            self.pos_embeddings = nn.Embedding(spec.max_position_embeddings, h)
        else:
            self.pos_embeddings = None
            self.register_buffer("freqs", torch.empty(spec.max_position_embeddings, self.rope_dim // 2, 2),
                                 persistent=False)
        self.dropout = nn.Dropout(spec.hidden_dropout)
        built = layers or range(spec.num_hidden_layers)  # the tracer builds one block per kind (graph/canonical.py)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i) for i in built})
        self.norm = make_norm(spec, h)
        self.output = None if spec.tie_word_embeddings else nn.Linear(h, spec.vocab_size, bias=False)

    @property
    def uses_rope(self) -> bool:
        return self.spec.position_embedding == PositionEmbedding.ROPE

    @property
    def rope_dim(self) -> int:
        return self.spec.qk_rope_head_dim if self.spec.uses_mla else self.spec.attn_head_dim

    def rope(self, seq_len: int) -> torch.Tensor | None:
        """The RoPE table for seq_len positions, extended past max_position_embeddings (RoPE has no
        hard limit; the scenario warns); None with learned positions, which stop at their table."""
        if not self.uses_rope:
            if seq_len > self.spec.max_position_embeddings:
                raise ValueError(f"seq_len={seq_len} exceeds max_position_embeddings={self.spec.max_position_embeddings}")
            return None
        if seq_len > self.freqs.shape[0]:
            meta = self.freqs.device.type == "meta"
            self.freqs = (torch.empty(seq_len, *self.freqs.shape[1:], device="meta") if meta else
                          rope_table(seq_len, self.rope_dim, self.spec.rope_theta).to(self.freqs.device))
        return self.freqs[:seq_len]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        if self.pos_embeddings is not None:
            h = h + self.pos_embeddings(torch.arange(tokens.shape[1], device=tokens.device))
        return self.dropout(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        if self.output is not None:
            return self.output(h)
        assert self.tok_embeddings is not None, "tied embeddings need tok_embeddings on the last stage"
        return F.linear(h, self.tok_embeddings.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] (or hidden states [B, S, h] on a later pipeline stage) -> logits [B, S, V]."""
        h = self.embed(tokens) if self.tok_embeddings is not None else tokens
        freqs = self.rope(h.shape[1])
        for layer in self.layers.values():
            h = layer(h, freqs)
        return self.head(h) if self.norm is not None else h

    loss_fn = staticmethod(loss_fn)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic init of params and buffers, independent of which modules a stage kept.

        Each parameter draws from its own generator seeded by (seed, FQN), so a pipeline stage
        holds exactly the values the whole model would. std 0.02, output projections (wo, w2)
        scaled by 1/sqrt(2L) (GPT-2, Radford et al. 2019); norms 1, biases 0.
        """
        out_std = INIT_STD / math.sqrt(2 * self.spec.num_hidden_layers)
        for fqn, param in self.named_parameters():
            leaf = fqn.rsplit(".", 1)[-1]
            if leaf == "bias" or (leaf == "weight" and param.ndim == 1):
                _fill(param, torch.full(param.shape, 0.0 if leaf == "bias" else 1.0))
                continue
            std = out_std if fqn.endswith(("wo.weight", "w2.weight", "experts.w2")) else INIT_STD
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(fqn.encode()))
            _fill(param, torch.randn(param.shape, generator=gen) * std)
        if self.uses_rope:
            self.freqs.copy_(rope_table(self.spec.max_position_embeddings, self.rope_dim, self.spec.rope_theta))
        for module in self.modules():
            if isinstance(module, MoE):
                module.expert_tokens = torch.zeros(module.num_experts, dtype=torch.long)


def _fill(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full CPU tensor into param, sharding it first when param is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        full = distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    param.copy_(full.to(param.dtype))
