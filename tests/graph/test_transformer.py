"""The canonical Transformer: builds on meta for every preset, trains on CPU, honours the FQN contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from planner.scenario import PRESETS, count_params
from planner.graph import MoE, Transformer, expand_kv, loss_fn


def _cpu_model(name: str, seed: int = 0, **update) -> Transformer:
    spec = PRESETS[name].model_copy(update=update)
    with torch.device("meta"):
        model = Transformer(spec)
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_with_closed_form_params(name: str) -> None:
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == count_params(PRESETS[name])[0]
    assert all(p.is_meta for p in model.parameters())


def test_fqns_follow_the_contract() -> None:
    names = {n for n, _ in _cpu_model("tiny-moe").named_parameters()}
    for fqn in ("tok_embeddings.weight", "layers.0.attention_norm.weight", "layers.0.attention.wq.weight",
                "layers.0.attention.wk.weight", "layers.0.attention.wv.weight", "layers.0.attention.wo.weight",
                "layers.0.ffn_norm.weight", "layers.0.moe.router.weight", "layers.0.moe.experts.w1",
                "layers.0.moe.experts.w2", "layers.0.moe.experts.w3", "norm.weight", "output.weight"):
        assert fqn in names, fqn
    mla = {n for n, _ in _cpu_model("tiny-mla").named_parameters()}
    assert {"layers.0.feed_forward.w1.weight", "layers.1.moe.shared_experts.w3.weight",
            "layers.1.attention.wq_a.weight", "layers.1.attention.q_norm.weight", "layers.1.attention.wkv_b.weight",
            "layers.1.attention.kv_norm.weight"} <= mla
    gpt = _cpu_model("tiny-gpt")
    assert gpt.output is None and gpt.pos_embeddings is not None and gpt.layers["0"].feed_forward.w3 is None


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe", "tiny-gpt", "tiny-mla"])
def test_one_training_step_on_cpu_lowers_the_loss(name: str) -> None:
    model = _cpu_model(name)
    tokens = torch.randint(0, model.spec.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(2):
        loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert abs(losses[0] - torch.log(torch.tensor(model.spec.vocab_size)).item()) < 0.5  # ~uniform at init
    assert losses[1] < losses[0]


def test_init_is_deterministic_and_independent_of_pipeline_slicing() -> None:
    a, b = _cpu_model("tiny-dense", seed=7), _cpu_model("tiny-dense", seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(_cpu_model("tiny-dense", seed=8).layers["1"].attention.wq.weight,
                           a.layers["1"].attention.wq.weight)
    spec = PRESETS["tiny-dense"]
    with torch.device("meta"):
        stage = Transformer(spec)
    del stage.layers["0"]
    stage.tok_embeddings = None
    stage.to_empty(device="cpu")
    stage.init_weights(7)
    assert torch.equal(stage.layers["3"].feed_forward.w2.weight, a.layers["3"].feed_forward.w2.weight)


def test_pipeline_stages_compose_to_the_whole_model() -> None:
    full = _cpu_model("tiny-gpt").eval()
    first, last = _cpu_model("tiny-gpt").eval(), _cpu_model("tiny-gpt").eval()
    for key in ("2", "3"):
        del first.layers[key]
    for key in ("0", "1"):
        del last.layers[key]
    first.norm = None
    last.pos_embeddings = None
    tokens = torch.randint(0, 512, (2, 16))
    hidden = first(tokens)
    assert hidden.shape == (2, 16, 128)
    # the tied head needs tok_embeddings on the last stage (here it is kept)
    torch.testing.assert_close(last.head(_run_blocks(last, hidden)), full(tokens))


def _run_blocks(model: Transformer, hidden: torch.Tensor) -> torch.Tensor:
    for layer in model.layers.values():
        hidden = layer(hidden, model.rope(hidden.shape[1]))
    return hidden


def test_tied_embeddings_share_the_head_weight() -> None:
    model = _cpu_model("tiny-dense", tie_word_embeddings=True)
    assert model.output is None
    loss_fn(model(torch.randint(0, 512, (1, 8))), torch.randint(0, 512, (1, 8))).backward()
    rows_used_only_by_head = model.tok_embeddings.weight.grad.abs().sum(-1) > 0
    assert rows_used_only_by_head.all()  # every vocab row gets a gradient through the head


class _NaiveCore(nn.Module):
    """Reference causal attention written out, standing in for a swapped-in ring attention."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-mla"])
def test_attention_core_is_swappable(name: str) -> None:
    model = _cpu_model(name).eval()
    tokens = torch.randint(0, 512, (2, 12))
    expected = model(tokens)
    for layer in model.layers.values():
        layer.attention.core = _NaiveCore()
    torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)


def test_heads_are_read_from_weight_shapes_like_a_tp_shard() -> None:
    """Keep the first half of the q and kv heads (a TP rank's shard): the block still runs."""
    attn = _cpu_model("tiny-dense").layers["0"].attention
    d = attn.head_dim
    for lin, rows in ((attn.wq, 2 * d), (attn.wk, d), (attn.wv, d)):
        lin.weight = nn.Parameter(lin.weight[:rows])
    attn.wo.weight = nn.Parameter(attn.wo.weight[:, : 2 * d])
    out = attn(torch.randn(1, 8, 128), _cpu_model("tiny-dense").rope(8))
    assert out.shape == (1, 8, 128)


def _reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token top-k mixture, the textbook definition (Shazeer et al. 2017)."""
    flat = x.reshape(-1, x.shape[-1])
    weights, indices = moe.route(flat)
    out = torch.zeros_like(flat)
    ex = moe.experts
    for t in range(flat.shape[0]):
        for w, e in zip(weights[t], indices[t], strict=True):
            hidden = torch.nn.functional.silu(flat[t] @ ex.w1[e].T) * (flat[t] @ ex.w3[e].T)
            out[t] += w * (hidden @ ex.w2[e].T)
    if moe.shared_experts is not None:
        out += moe.shared_experts(flat)
    return out.view(x.shape)


@pytest.mark.parametrize("name", ["tiny-moe", "tiny-mla"])
def test_dropless_moe_matches_the_textbook_mixture(name: str) -> None:
    model = _cpu_model(name)
    moe = model.layers["1"].moe
    x = torch.randn(2, 10, 128)
    torch.testing.assert_close(moe(x), _reference_moe(moe, x), rtol=1e-4, atol=1e-5)
    assert (moe.shared_experts is not None) == (name == "tiny-mla")


def test_capacity_factor_drops_overflow_and_routing_is_recorded() -> None:
    model = _cpu_model("tiny-moe", capacity_factor=0.5)
    moe = model.layers["0"].moe
    moe.record_routing = True
    x = torch.randn(1, 32, 128)
    out = moe(x)
    cap = moe.capacity(32)
    assert cap == 8  # ceil(0.5 * 32 tokens * top-2 / 4 experts)
    assert int(moe.expert_tokens.max()) <= cap and int(moe.expert_tokens.sum()) <= 4 * cap
    assert moe.last_indices.shape == (32, 2)
    dropless = _cpu_model("tiny-moe").layers["0"].moe
    assert not torch.allclose(out, dropless(x))  # dropped slots change the output


def test_meta_forward_spreads_tokens_evenly_over_experts() -> None:
    with torch.device("meta"):
        moe = Transformer(PRESETS["tiny-moe"]).layers["0"].moe
    order, counts = moe._plan_dispatch(torch.empty(30, 2, dtype=torch.long, device="meta"), None)
    assert counts == [15, 15, 15, 15] and order.shape == (60,)
    assert moe._plan_dispatch(torch.empty(30, 2, dtype=torch.long, device="meta"), 10)[1] == [10] * 4


def test_seq_len_beyond_learned_positions_is_a_user_error_but_rope_extends() -> None:
    with torch.device("meta"), pytest.raises(ValueError, match="max_position_embeddings"):
        Transformer(PRESETS["tiny-gpt"]).rope(4096)  # learned positions stop at their table
    with torch.device("meta"):
        assert Transformer(PRESETS["tiny-dense"]).rope(4096).shape[0] == 4096  # RoPE has no hard limit
    model = Transformer(PRESETS["tiny-dense"])
    model.init_weights(0)
    short, long = model.freqs[:16].clone(), model.rope(2048)
    assert long.shape[0] == 2048 and torch.equal(long[:16], short)  # same angles, more positions
