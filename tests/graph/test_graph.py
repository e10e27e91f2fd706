"""The meta-device graph extractor against published counts and closed forms.

Sources of the formulas checked here:
- training FLOPs per token = 6N + 12*L*h*s: Chowdhery et al. 2022 (PaLM, arXiv 2204.02311),
  appendix B; Narayanan et al. 2021 (Megatron, arXiv 2104.04473) eq. 3. N excludes the input
  embedding lookup (it does no matmul; Kaplan et al. 2020, arXiv 2001.08361, Sec. 2.1) and,
  for MoE, counts only the top-k routed experts a token visits.
- saved activations per layer = 34sbh + 5as^2b bytes, 34sbh with selective recompute:
  Korthikanti et al. 2022 (arXiv 2205.05198), eq. 1 and Sec. 4.2, fp16/bf16 with dropout.
"""

from __future__ import annotations

import json
import sys
import textwrap
from functools import cache

import networkx as nx
import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from planner.graph import LayerKind, ModelGraph, OpKind, extract_graph, trace_module
from planner.graph import graph_for
from planner.scenario import PRESETS
from planner.graph import Transformer, loss_fn


@cache
def _graph(name: str, seq_len: int) -> ModelGraph:
    return extract_graph(PRESETS[name], seq_len=seq_len)


# Published totals (total, active): Dubey et al. 2024 (arXiv 2407.21783) Table 3 and the
# meta-llama model cards (8.03B, 70.6B, 405B); Brown et al. 2020 Table 2.1 (175.0B);
# Jiang et al. 2024 (arXiv 2401.04088) / Mistral AI: 46.7B total, 12.9B active.
PUBLISHED = {
    "llama3-8b": (8.03e9, None), "llama3-70b": (70.6e9, None), "llama3.1-405b": (405e9, None),
    "gpt3-175b": (175.0e9, None), "mixtral-8x7b": (46.7e9, 12.9e9),
}
TRAIN_SEQ = {"llama3-8b": 8192, "llama3-70b": 8192, "llama3.1-405b": 8192, "gpt3-175b": 2048, "mixtral-8x7b": 4096}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_published_within_half_a_percent(name: str) -> None:
    g = _graph(name, TRAIN_SEQ[name])
    total, active = PUBLISHED[name]
    assert g.num_params == pytest.approx(total, rel=0.005)
    if active is not None:
        assert g.num_active_params == pytest.approx(active, rel=0.005)
    assert len(g.layers) == PRESETS[name].num_hidden_layers + 2


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_training_flops_per_token_match_6n_plus_attention(name: str) -> None:
    spec, s = PRESETS[name], TRAIN_SEQ[name]
    g = _graph(name, s)
    lookup = g.layers[0].num_params - (spec.vocab_size * spec.hidden_size if spec.tie_word_embeddings else 0)
    n = g.num_active_params - lookup
    closed = 6 * n + 12 * spec.num_hidden_layers * spec.hidden_size * s
    assert (g.fwd_flops + g.bwd_flops) / (g.sample_batch * s) == pytest.approx(closed, rel=0.01)


def test_gpt3_175b_saved_activations_match_korthikanti() -> None:
    g = _graph("gpt3-175b", 2048)
    s, b, h, a = 2048, 1, 12288, 96
    for layer in g.blocks[:1] + g.blocks[-1:]:
        assert layer.saved_bytes == pytest.approx(34 * s * b * h + 5 * a * s * s * b, rel=0.05)
        assert layer.saved_bytes_selective == pytest.approx(34 * s * b * h, rel=0.05)
        assert layer.saved_bytes_selective < layer.saved_bytes_flash < 1.01 * layer.saved_bytes_selective
        assert layer.input_bytes == 2 * s * b * h  # what full recompute keeps (bf16)


def test_saved_activations_scale_with_batch() -> None:
    one, two = extract_graph(PRESETS["tiny-gpt"], seq_len=64), extract_graph(PRESETS["tiny-gpt"], seq_len=64, batch=2)
    assert two.blocks[0].saved_bytes == 2 * one.blocks[0].saved_bytes
    assert two.fwd_flops == 2 * one.fwd_flops


@pytest.mark.parametrize("name", ["tiny-moe", "tiny-mla", "tiny-gpt"])
def test_replicated_blocks_equal_a_whole_model_trace(name: str) -> None:
    """The APEX-style shortcut (one traced block per kind) against tracing every op."""
    spec = PRESETS[name]
    with torch.device("meta"):
        model = Transformer(spec).to(torch.bfloat16)
    labels = torch.zeros(2, 64, dtype=torch.long, device="meta")
    whole = trace_module(model, (torch.zeros(2, 64, dtype=torch.long),), name=name,
                         loss=lambda logits: loss_fn(logits, labels))
    fast = extract_graph(spec, seq_len=64, batch=2)
    assert [lay.name for lay in whole.layers] == [lay.name for lay in fast.layers]
    for w, f in zip(whole.layers, fast.layers, strict=True):
        assert w == f, w.name
    assert whole.dag.number_of_nodes() == fast.dag.number_of_nodes()
    assert whole.dag.number_of_edges() == fast.dag.number_of_edges()
    assert sorted(n.split("/", 1)[0] + n.split(":", 1)[1] for n in whole.dag) == \
        sorted(n.split("/", 1)[0] + n.split(":", 1)[1] for n in fast.dag)


def test_dag_nodes_hold_op_nodes_and_chain_embedding_to_loss() -> None:
    g = extract_graph(PRESETS["tiny-dense"], seq_len=32)
    assert nx.is_directed_acyclic_graph(g.dag) and nx.is_weakly_connected(g.dag)
    ops = [d["op"] for _, d in g.dag.nodes(data=True)]
    assert all(g.layers[d["layer"]].name == n.split("/")[0] for n, d in g.dag.nodes(data=True))
    assert {op.kind for op in ops} >= {OpKind.EMBEDDING, OpKind.MATMUL, OpKind.ATTENTION, OpKind.NORM,
                                      OpKind.ELEMENTWISE, OpKind.LOSS}
    wq = next(op for op in ops if op.module == "layers.2.attention.wq")
    assert wq.fwd_flops == 2 * 32 * 128 * 128 and wq.bwd_flops == 2 * wq.fwd_flops
    assert wq.bwd_weight_flops == wq.fwd_flops and wq.param_bytes == 128 * 128 * 2
    block = g.blocks[0]
    assert block.bwd_weight_flops == block.by_kind[OpKind.MATMUL].fwd_flops  # dW = one GEMM per weight GEMM
    assert sum(k.saved_bytes for k in block.by_kind.values()) == pytest.approx(block.saved_bytes)
    assert g.layers[-1].kind == LayerKind.HEAD and OpKind.LOSS in g.layers[-1].by_kind


def test_moe_layers_record_expert_stats() -> None:
    g = extract_graph(PRESETS["tiny-mla"], seq_len=64)
    dense, moe = g.blocks[0], g.blocks[1]
    assert dense.block_kind == "dense" and dense.moe is None and moe.block_kind == "moe"
    stats = moe.moe
    assert (stats.num_experts, stats.top_k) == (4, 2)
    assert stats.expert_params == 3 * 128 * 64 and stats.shared_params == 3 * 128 * 64
    assert stats.dispatch_bytes_per_token == 128 * 2 * 2
    assert moe.by_kind[OpKind.EXPERT_MATMUL].fwd_flops == 64 * 2 * stats.expert_fwd_flops_per_token
    assert moe.num_params - moe.num_active_params == 2 * stats.expert_params


def _hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16)


def test_hf_llama_traces_with_exact_matmul_flops() -> None:
    model = _hf_llama()
    g = trace_module(model, (torch.zeros(2, 32, dtype=torch.long),), name="hf-llama")
    assert [lay.kind for lay in g.layers] == [LayerKind.EMBEDDING] + [LayerKind.BLOCK] * 3 + [LayerKind.HEAD]
    assert g.num_params == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(lay.by_kind[OpKind.MATMUL].fwd_flops for lay in g.layers if OpKind.MATMUL in lay.by_kind) == 2 * 64 * linear
    attn = g.blocks[0].by_kind[OpKind.ATTENTION].fwd_flops
    assert attn >= 2 * 2 * 64 * 32 * 64  # QK^T and AV over the full s x s (b=2, s=32, h=64)
    assert g.blocks[0].saved_bytes > g.blocks[0].saved_bytes_flash > 0
    assert (g.hidden_size, g.num_attention_heads, g.num_key_value_heads, g.vocab_size) == (64, 4, 2, 300)


def test_hf_mixtral_traces_with_expert_stats() -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, num_local_experts=4, num_experts_per_tok=2)
    with torch.device("meta"):
        model = MixtralForCausalLM(cfg).to(torch.bfloat16)
    g = trace_module(model, {"input_ids": torch.zeros(1, 16, dtype=torch.long)}, name="hf-mixtral")
    moe = g.blocks[0].moe
    assert moe is not None and (moe.num_experts, moe.top_k, moe.expert_params) == (4, 2, 3 * 64 * 96)
    assert g.blocks[0].by_kind[OpKind.EXPERT_MATMUL].fwd_flops == 16 * 2 * moe.expert_fwd_flops_per_token
    assert g.num_params == sum(p.numel() for p in model.parameters())
    assert g.num_active_params == g.num_params - 2 * 2 * moe.expert_params


FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    @torch.library.custom_op("plannertest::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        def forward(self, x):
            return x + self.down(torch.relu(self.up(mystery(x))))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            self.out = nn.Linear(32, 100)
        def forward(self, tokens):
            h = self.emb(tokens)
            for b in self.blocks:
                h = b(h)
            return self.out(h)

    def build():
        return Tiny()

    def build_with_inputs():
        return Tiny(), (torch.zeros(4, 8, dtype=torch.long),)
''')


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    (tmp_path / "user_lm.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_lm"
    sys.modules.pop("user_lm", None)


def test_user_factory_traces_and_unsupported_ops_are_estimated(user_factory: str) -> None:
    with pytest.warns(UserWarning, match="plannertest"):
        g = graph_for(None, model=f"{user_factory}:build", seq_len=16)
    assert [lay.kind for lay in g.layers] == [LayerKind.EMBEDDING] + [LayerKind.BLOCK] * 3 + [LayerKind.HEAD]
    assert g.blocks[0].num_params == 32 * 64 * 2 + 64 + 32
    assert g.blocks[0].by_kind[OpKind.MATMUL].fwd_flops == 16 * 2 * 2 * 32 * 64
    mystery = [d["op"] for _, d in g.dag.nodes(data=True) if "mystery" in d["op"].target]
    assert len(mystery) == 3 and all(op.estimated and op.kind == OpKind.OTHER for op in mystery)
    assert any("plannertest" in w for w in g.warnings)
    explicit = graph_for(None, model=f"{user_factory}:build_with_inputs", seq_len=16)
    assert (explicit.sample_batch, explicit.seq_len) == (4, 8)


def test_cli_prints_json_and_table(user_factory: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["graph", "--model", "tiny-moe", "--seq-len", "32", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"] == extract_graph(PRESETS["tiny-moe"], seq_len=32).num_params
    assert len(data["layers"]) == 6 and data["layers"][1]["experts"] == 4
    table = runner.invoke(app, ["graph", "scenarios/tiny-dense_cpu4.toml"])
    assert table.exit_code == 0 and "layers.3" in table.output and "total" in table.output
    factory = runner.invoke(app, ["graph", "--model", f"{user_factory}:build", "--seq-len", "8"])
    assert factory.exit_code == 0 and "blocks.2" in factory.output


@pytest.mark.parametrize("argv", [["graph"], ["graph", "--model", "no-such-model"],
                                  ["graph", "--model", "nosuchpkg.mod:f"], ["graph", "--model", "tiny-gpt",
                                                                            "--seq-len", "99999"]])
def test_cli_bad_input_is_one_line_exit_2(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["tiny-moe", "tiny-mla"])
def test_pausing_the_garbage_collector_changes_no_graph(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """graph/collector.collector_paused: the trace with the cyclic collector off (and collecting at
    every chance) gives the same ops, edges and layers; the collector is back on afterwards."""
    import contextlib
    import gc

    import planner.graph.canonical as canonical

    spec = PRESETS[name]
    paused = extract_graph(spec, seq_len=256)
    assert gc.isenabled()
    monkeypatch.setattr(canonical, "collector_paused", contextlib.nullcontext)
    threshold = gc.get_threshold()
    gc.set_threshold(50, 1, 1)  # a full collection every ~50 allocations: any dependence would show
    try:
        collected = extract_graph(spec, seq_len=256)
    finally:
        gc.set_threshold(*threshold)
    assert paused.layers == collected.layers and paused.warnings == collected.warnings
    assert list(paused.dag.nodes(data=True)) == list(collected.dag.nodes(data=True))
    assert list(paused.dag.edges) == list(collected.dag.edges)
