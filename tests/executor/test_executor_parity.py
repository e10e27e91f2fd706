"""Loss parity: five steps of every layout on gloo match one process running the same model and seed."""

from __future__ import annotations

import json
import math
import os
import sys
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from executor.data import global_batch
from executor.data_parallel import make_optimizer
from executor.documents import packed_batch, piece_tokens
from executor.ring_attention import BidirectionalRingAttention, RingAttention, zigzag_positions
from executor.ulysses import UlyssesAttention, cp_positions
from planner.cost import estimate, rank_loads
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import CpKind
from planner.scenario import BalancePolicy, LengthBin, SequencesSpec
from executor.train import RunOptions, train
from planner.scenario import cluster_preset
from planner.plan import Plan
from planner.scenario import JobSpec, ModelSpec, OptimizerSpec, Scenario
from planner.graph import Transformer, loss_fn

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 5
TOLERANCE = 1e-5
DENSE = ModelSpec(name="parity-dense", num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
MOE = DENSE.model_copy(update={"name": "parity-moe", "num_local_experts": 4, "num_experts_per_tok": 2,
                               "moe_intermediate_size": 32})
# GPT-2 style: tied input/output embeddings, learned positions
TIED = DENSE.model_copy(update={"name": "parity-tied", "tie_word_embeddings": True, "position_embedding": "learned"})
# SGD exposes gradient-scale mistakes that Adam's normalisation hides; AdamW checks optimizer-state sharding.
SGD = JobSpec(seq_len=16, global_batch=8, precision="fp32", optimizer=OptimizerSpec(kind="sgd", lr=0.5))
ADAMW = JobSpec(seq_len=16, global_batch=8, precision="fp32", optimizer=OptimizerSpec(lr=1e-2))
# Packed variable-length documents (2..32 tokens, long ones cut at row ends), document-masked attention.
_MIX = SequencesSpec(histogram=[LengthBin(max_tokens=4, share=0.5), LengthBin(max_tokens=12, share=0.3),
                                LengthBin(max_tokens=32, share=0.2)])
DOCS = SGD.model_copy(update={"sequences": _MIX})
DOCS_SORTED = ADAMW.model_copy(update={"sequences": _MIX.model_copy(update={"balance": BalancePolicy.SORT_AND_PACK})})

# name -> (model, job, plan fields); every layout the executor runs, on 2 and on 4 ranks
TWO_RANKS = {
    "dp2": (DENSE, SGD, {"dims": {"dp": 2}, "micro_batch_size": 2}),
    "tp2": (DENSE, SGD, {"dims": {"tp": 2}}),
    "tp2-sp": (DENSE, SGD, {"dims": {"tp": 2}, "sequence_parallel": True}),
    "pp2-1f1b": (DENSE, SGD, {"dims": {"pp": 2}, "micro_batch_size": 2}),
    "pp2-gpipe": (DENSE, SGD, {"dims": {"pp": 2}, "micro_batch_size": 4, "schedule": "gpipe"}),
    "cp2": (DENSE, SGD, {"dims": {"cp": 2}, "micro_batch_size": 8}),
    "zero1-dp2": (DENSE, ADAMW, {"dims": {"dp": 2}, "micro_batch_size": 4, "zero_stage": 1}),
    "zero2-dp2": (DENSE, ADAMW, {"dims": {"dp": 2}, "micro_batch_size": 4, "zero_stage": 2}),
    "zero3-dp2-recompute": (DENSE, SGD, {"dims": {"dp": 2}, "micro_batch_size": 4, "zero_stage": 3,
                                         "recompute": "full"}),
    "ep2": (MOE, SGD, {"dims": {"dp": 2, "ep": 2}, "micro_batch_size": 4, "expert_placement": [[1, 0, 0, 1]] * 4}),
    # MoE under attention TP, folded: experts on edp2 (tp ranks split the routed slots) / on ep2 with SP
    "moe-tp2": (MOE, SGD, {"dims": {"tp": 2}}),
    "moe-tp2-sp-ep2": (MOE, ADAMW, {"dims": {"tp": 2, "ep": 2}, "sequence_parallel": True,
                                    "expert_placement": [[1, 0, 0, 1]] * 4}),
    "moe-dp2-ep2-zero3": (MOE, SGD, {"dims": {"dp": 2, "ep": 2}, "micro_batch_size": 2, "zero_stage": 3}),
    # tied embeddings: vocab-parallel head; first/last stage copies; learned positions under SP
    "tied-tp2-sp": (TIED, SGD, {"dims": {"tp": 2}, "sequence_parallel": True}),
    "tied-pp2": (TIED, ADAMW, {"dims": {"pp": 2}, "micro_batch_size": 2}),
    "cp2-ulysses": (DENSE, SGD, {"dims": {"cp": 2}, "micro_batch_size": 8, "cp_kind": "all-to-all"}),
    "cp2-bidirectional": (DENSE, SGD, {"dims": {"cp": 2}, "micro_batch_size": 4, "cp_kind": "ring-bidirectional"}),
    "docs-dp2-sorted": (DENSE, DOCS_SORTED, {"dims": {"dp": 2}, "micro_batch_size": 2}),
    "vocab-pp2": (DENSE, ADAMW, {"dims": {"pp": 2}, "micro_batch_size": 2, "schedule": "gpipe",
                                 "vocab_parallel": True}),
    "offload-dp2-zero1": (DENSE, ADAMW, {"dims": {"dp": 2}, "micro_batch_size": 4, "zero_stage": 1,
                                         "offload": {"optimizer": "host"}}),
}
FOUR_RANKS = {
    "dp2xtp2": (DENSE, SGD, {"dims": {"dp": 2, "tp": 2}, "micro_batch_size": 4}),
    "tp2xpp2": (DENSE, SGD, {"dims": {"tp": 2, "pp": 2}, "micro_batch_size": 2}),
    "dp2xpp2": (DENSE, SGD, {"dims": {"dp": 2, "pp": 2}, "micro_batch_size": 1}),
    "cp2xtp2-sp": (DENSE, SGD, {"dims": {"cp": 2, "tp": 2}, "micro_batch_size": 8, "sequence_parallel": True,
                                "recompute": "selective"}),
    "pp2-interleaved-zero3": (DENSE, ADAMW, {"dims": {"pp": 2, "dp": 2}, "micro_batch_size": 2,
                                             "virtual_stages": 2, "schedule": "interleaved-1f1b", "zero_stage": 3}),
    "ep2xdp2": (MOE, ADAMW, {"dims": {"dp": 4, "ep": 2}, "micro_batch_size": 2, "zero_stage": 1}),
    "ep2xdp2-sgd": (MOE, SGD, {"dims": {"dp": 4, "ep": 2}, "micro_batch_size": 1}),
    "moe-dp2xtp2-ep2-zero2": (MOE, ADAMW, {"dims": {"dp": 2, "tp": 2, "ep": 2}, "micro_batch_size": 4,
                                           "zero_stage": 2, "sequence_parallel": True}),
    "moe-tp2xpp2-ep2": (MOE, SGD, {"dims": {"tp": 2, "pp": 2, "ep": 2}, "micro_batch_size": 2}),
    "moe-dp2xtp2-etp2-zero3": (MOE, SGD, {"dims": {"dp": 2, "tp": 2, "etp": 2}, "micro_batch_size": 2,
                                          "zero_stage": 3}),
    # ep and etp together (an EP rank can receive no slot: the etp exchange must handle zero rows)
    "moe-dp2xtp2-ep2-etp2": (MOE, ADAMW, {"dims": {"dp": 2, "tp": 2, "ep": 2, "etp": 2}, "micro_batch_size": 2}),
    "moe-dp4-ep2-etp2": (MOE, SGD, {"dims": {"dp": 4, "ep": 2, "etp": 2}, "micro_batch_size": 2,
                                    "expert_placement": [[1, 0, 0, 1]] * 4}),
    "tied-tp2xpp2-sp": (TIED, SGD, {"dims": {"tp": 2, "pp": 2}, "micro_batch_size": 2, "sequence_parallel": True}),
    "tied-dp2xpp2-zero3": (TIED, ADAMW, {"dims": {"dp": 2, "pp": 2}, "micro_batch_size": 2, "zero_stage": 3}),
    "cp4-ulysses": (DENSE, SGD, {"dims": {"cp": 4}, "micro_batch_size": 4, "cp_kind": "all-to-all"}),
    "cp4-bidirectional": (DENSE, ADAMW, {"dims": {"cp": 4}, "micro_batch_size": 8, "cp_kind": "ring-bidirectional"}),
    "cp2xtp2-ulysses-gqa": (DENSE, SGD, {"dims": {"cp": 2, "tp": 2}, "micro_batch_size": 8, "cp_kind": "all-to-all"}),
    "cp4-hybrid2": (DENSE, ADAMW, {"dims": {"cp": 4}, "micro_batch_size": 8, "cp_kind": "hybrid", "cp_a2a": 2}),
    "cp2xdp2-bidirectional": (DENSE, SGD, {"dims": {"cp": 2, "dp": 2}, "micro_batch_size": 2,
                                           "cp_kind": "ring-bidirectional"}),
    "docs-dp4": (DENSE, DOCS, {"dims": {"dp": 4}, "micro_batch_size": 1}),
    "docs-dp2xtp2-sorted": (DENSE, DOCS_SORTED, {"dims": {"dp": 2, "tp": 2}, "micro_batch_size": 2}),
    "vocab-pp4": (DENSE, SGD, {"dims": {"pp": 4}, "micro_batch_size": 2, "schedule": "gpipe",
                               "vocab_parallel": True}),
    "vocab-dp2xpp2-zero1": (DENSE, ADAMW, {"dims": {"dp": 2, "pp": 2}, "micro_batch_size": 1, "schedule": "gpipe",
                                           "vocab_parallel": True, "zero_stage": 1}),
    "offload-dp2xtp2": (DENSE, ADAMW, {"dims": {"dp": 2, "tp": 2}, "micro_batch_size": 2,
                                       "offload": {"optimizer": "host"}}),
}


def scenario_for(spec: ModelSpec, job: JobSpec) -> Scenario:
    return Scenario(name="parity", model=spec, cluster=cluster_preset("cpu-local"), job=job)


def reference_losses(spec: ModelSpec, job: JobSpec, *, steps: int = STEPS) -> list[float]:
    """A plain single-process loop: whole global batch, no parallelism (packed documents: each
    document piece run alone, unpacked, its token losses summed over the batch's tokens)."""
    with torch.device("meta"):
        model = Transformer(spec)
    model.to_empty(device="cpu")
    model.init_weights(0)
    optimizer = make_optimizer(list(model.parameters()), job=job)
    losses = []
    for step in range(steps):
        if job.sequences is None:
            inputs, labels = global_batch(step, job=job, vocab=spec.vocab_size, seed=0)
            loss = loss_fn(model(inputs), labels)
        else:
            loss = _unpacked_loss(model, step, job=job, vocab=spec.vocab_size)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def world_of(fields: dict) -> int:
    return math.prod(fields["dims"].values())


def predicted_stage_params(spec: ModelSpec, job: JobSpec, fields: dict) -> list[float]:
    """The memory model's weights per GPU of each pipeline stage, in parameters."""
    cluster = cluster_preset("cpu-local").model_copy(update={"gpus_per_node": world_of(fields)})
    e = estimate(extract_graph(spec, seq_len=job.seq_len), Plan.model_validate(fields), hw=datasheet_profile(cluster),
                 cluster=cluster, job=job)
    return [terms["weights"] / job.precision.bytes for terms in e.stage_memory]


def predicted_host_bytes(spec: ModelSpec, job: JobSpec, fields: dict) -> float:
    """The cost model's offloaded host bytes per GPU for this plan on a CPU node of its size."""
    cluster = cluster_preset("cpu-local").model_copy(update={"gpus_per_node": world_of(fields)})
    plan = Plan.model_validate(fields)
    e = estimate(extract_graph(spec, seq_len=job.seq_len), plan, hw=datasheet_profile(cluster), cluster=cluster, job=job)
    return e.offloaded_bytes["host"]


def count_params_of(spec: ModelSpec) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(spec).parameters())


def _unpacked_loss(model: Transformer, step: int, *, job: JobSpec, vocab: int) -> torch.Tensor:
    rows = packed_batch(step, job=job, vocab=vocab, seed=0).pieces
    total = torch.zeros(())
    for r, pieces in enumerate(rows):
        for p, n in enumerate(pieces):
            tokens = piece_tokens(step, r, p, length=n, vocab=vocab, seed=0)
            logits = model(tokens[None, :-1])
            total = total + F.cross_entropy(logits[0].float(), tokens[1:], reduction="sum")
    return total / (job.global_batch * job.seq_len)


def cp_core_error(kind: CpKind, core, *, heads: int = 4, kv_heads: int = 2) -> float:
    """A CP attention core on all ranks vs SDPA on the whole sequence: forward and q/k/v gradients."""
    rank, cp = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 32, 8, generator=gen, requires_grad=True) for h in (heads, kv_heads, kv_heads))
    grad_out = torch.randn(2, heads, 32, 8, generator=gen)
    g = heads // kv_heads
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)
    ref.backward(grad_out)
    pos = cp_positions(kind, 32, rank=rank, cp=cp)
    local = [t.detach()[:, :, pos].clone().requires_grad_() for t in (q, k, v)]
    out = core(dist.group.WORLD)(*local)
    out.backward(grad_out[:, :, pos])
    errors = [out - ref[:, :, pos]] + [a.grad - b.grad[:, :, pos] for a, b in zip(local, (q, k, v))]
    worst = torch.tensor(max(e.abs().max().item() for e in errors))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def ring_attention_error() -> float:
    """Zigzag ring attention on all ranks vs SDPA on the whole sequence: forward and q/k/v gradients (GQA)."""
    rank, cp = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 32, 8, generator=gen, requires_grad=True) for h in (4, 2, 2))
    grad_out = torch.randn(2, 4, 32, 8, generator=gen)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    ref.backward(grad_out)
    pos = zigzag_positions(32, rank=rank, cp=cp)
    local = [t.detach()[:, :, pos].clone().requires_grad_() for t in (q, k, v)]
    out = RingAttention(dist.group.WORLD)(*local)
    out.backward(grad_out[:, :, pos])
    errors = [out - ref[:, :, pos]] + [a.grad - b.grad[:, :, pos] for a, b in zip(local, (q, k, v))]
    worst = torch.tensor(max(e.abs().max().item() for e in errors))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def _worker(rank: int, world: int, port: int, names: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    configs = TWO_RANKS | FOUR_RANKS
    results = {"ring-attention": [ring_attention_error()],
               "ulysses": [cp_core_error(CpKind.ALL_TO_ALL, UlyssesAttention),
                           cp_core_error(CpKind.ALL_TO_ALL, UlyssesAttention, heads=8, kv_heads=2)],
               "bidirectional": [cp_core_error(CpKind.RING_BIDIRECTIONAL, BidirectionalRingAttention)]}
    for name in names:
        spec, job, fields = configs[name]
        measurement = train(Plan.model_validate(fields), scenario_for(spec, job), options=RunOptions(steps=STEPS))
        results[name] = measurement.losses
        if measurement.dp_loads is not None:
            results[f"{name}:loads"] = measurement.dp_loads
        if measurement.offload is not None:
            results[f"{name}:offload"] = measurement.offload
        if fields.get("vocab_parallel"):
            results[f"{name}:params"] = measurement.params
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    # Exit without destroying the dozens of gloo sub-groups and FSDP state this worker built:
    # their native teardown occasionally aborts ("malloc(): unaligned tcache chunk") after all
    # work is done and checked (PLATFORM.md notes the same for FSDP2 teardown on gloo).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_layouts(names: list[str], *, world: int, tmp_path: Path) -> dict[str, list[float]]:
    """All layouts in ONE spawn of `world` ranks (start-up is ~2 s per rank)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"losses{world}.json"
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_worker, args=(world, port, names, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def _check(results: dict[str, list[float]], configs: dict) -> None:
    assert results["ring-attention"][0] < 1e-5
    assert max(results["ulysses"] + results["bidirectional"]) < 1e-5
    refs = {(spec.name, job.model_dump_json()): reference_losses(spec, job) for spec, job, _ in configs.values()}
    for name, (spec, job, fields) in configs.items():
        ref = refs[spec.name, job.model_dump_json()]
        if job.sequences is not None:  # the attention work each dp rank did is what the plan predicts
            dp = fields["dims"]["dp"]
            predicted = [[[t, p] for t, p in zip(loads.tokens, loads.pairs)]
                         for loads in (rank_loads(job, dp=dp, step=s) for s in range(STEPS))]
            assert results[f"{name}:loads"] == predicted, name
        if fields.get("vocab_parallel"):  # each stage holds the weights the memory model puts there
            held = results[f"{name}:params"]
            predicted = predicted_stage_params(spec, job, fields)
            pp = fields["dims"]["pp"]
            stage_of = [r // (world_of(fields) // pp) for r in range(world_of(fields))]  # pp is outermost
            for r, n in enumerate(held):  # up to the final norm, which the model spreads and the run keeps last
                assert abs(n - predicted[stage_of[r]]) <= spec.hidden_size, (name, r, held, predicted)
        if fields.get("offload"):  # the state lived in the host pool and moved every step
            moved = results[f"{name}:offload"]
            exact = fields.get("zero_stage") == 1 and set(fields["dims"]) == {"dp"}  # dp shards deal every weight once
            if exact:
                assert moved["params"] == count_params_of(spec)
            # the memory model's host term (cost/offload.py) per GPU, times the GPUs, is the pool the run held
            predicted = predicted_host_bytes(spec, job, fields) * world_of(fields)
            assert moved["host_state_bytes"] == pytest.approx(predicted, rel=1e-9 if exact else 0.03), name
            assert moved["params"] > 0 and moved["d2h_bytes"] == moved["h2d_bytes"] == STEPS * 4 * moved["params"]
            assert moved["host_state_bytes"] == 3 * 4 * moved["params"]  # fp32 master + AdamW m, v
        assert ref[0] - ref[-1] > 0.01, "the reference must learn, or parity proves little"
        worst = max(abs(a - b) for a, b in zip(results[name], ref))
        assert len(results[name]) == STEPS and worst < TOLERANCE, f"{name}: {results[name]} vs {ref} ({worst:.2e})"


def test_parity_two_ranks(tmp_path):
    _check(run_layouts(list(TWO_RANKS), world=2, tmp_path=tmp_path), TWO_RANKS)


def test_parity_four_ranks(tmp_path):
    _check(run_layouts(list(FOUR_RANKS), world=4, tmp_path=tmp_path), FOUR_RANKS)
