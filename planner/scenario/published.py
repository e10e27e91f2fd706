"""Published training runs (a CSV with published_runs.csv's columns) -> scenario tables + plans.

Each row becomes the [model], [cluster] and [job] tables a user would write, validated by the same
scenario_from_dict that reads scenario files, and a Plan with the row's layout. The row's
`framework` text picks the runtime (runtime.match_framework; unknown text -> "generic"). Cells a
row leaves empty get one assumption for every row (ASSUMPTIONS); nothing here names a row, a
source or a model. The measurement becomes tokens/s per GPU by undoing the row's own FLOP
convention (tokens/s does not depend on it; SOURCES.md "Read this before comparing numbers").
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from planner.plan import Plan, Recompute, check
from planner.scenario.runtime import FrameworkRuntime, match_framework
from planner.errors import ScenarioError
from planner.scenario.load import scenario_from_dict
from planner.scenario.spec import Scenario

REQUIRED_COLUMNS = ("row_id", "source", "model_name", "layers", "hidden", "heads", "vocab", "seq_len", "gpu",
                    "n_gpus", "tp", "pp", "global_batch", "framework")

ASSUMPTIONS = {
    "micro_batch": "1 when the runtime accumulates gradients (Megatron recipes) or pipelines; else the local batch",
    "cp, vp": "1 (no context parallelism, no interleaving)",
    "ep": "MoE models: the largest degree dividing both the experts and a pipeline stage's GPUs; dense: 1",
    "etp": "tp when ep x tp fits in a pipeline stage (Megatron's default expert TP), else 1",
    "kv_heads": "heads (multi-head attention)",
    "ffn_hidden": "4 x hidden (GPT convention); a dense model is gated (SwiGLU) iff ffn_hidden != 4 x hidden",
    "moe_topk": "2",
    "recompute": "the runtime's recipe default (runtime file `recompute`); when that plan does not fit in "
                 "memory, the least recompute that does (the run was measured, so it fit)",
    "zero_stage_or_fsdp": "the runtime's recipe default (runtime file `zero_stage`)",
    "precision": "bf16 ('fp16' or 'fp8' when the text says so)",
    "global_batch": "8 x pp micro-batches per pipeline (a bubble under 1/8), times dp x micro_batch",
    "tp, pp": "the layout of the rows of the same source and model that state one; else unmapped",
    "gpus_per_node, nvlink_domain, link bandwidths": "the GPU's DGX/HGX preset",
}

# A row compiled its blocks when its framework or notes say so: "torch.compile", or "compile" as a
# technique joined by "+" ("compile+Float8", "FSDP+CP + compile + Float8" in the torchtitan tables).
_COMPILED = re.compile(r"torch\.compile|\+\s*compile\b|\bcompile\s*\+")

# GPU text -> cluster preset; first hit wins, so specific variants come first.
_GPU_PRESETS = (("gb200", "gb200-nvl72"), ("b200", "dgx-b200"), ("h200", "hgx-h200"), ("h800", "hgx-h800"),
                ("hbm2e", "grand-teton-h100"), ("h100", "dgx-h100"), ("a100-40", "dgx-a100-40gb"),
                ("a100", "dgx-a100"), ("ampere", "dgx-a100"), ("mi300x", "mi300x-8"))


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedRun:
    """One CSV row mapped (scenario and plan) or not (reason), with its measurement."""

    row_id: str
    source: str
    model: str
    n_gpus: int
    measured_tokens_per_s_per_gpu: float | None
    framework: str
    scenario: Scenario | None = None
    plan: Plan | None = None
    reason: str | None = None
    recompute_stated: bool = True  # False: the plan carries the runtime's default (the run may have needed more)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: CSV not found")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in REQUIRED_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)} (see published_runs.csv)")
    return [{k: (v or "").strip() for k, v in row.items()} for row in rows]


def load_runs(path: str | Path) -> list[PublishedRun]:
    rows = read_rows(path)
    layouts = _stated_layouts(rows)
    return [map_row(row, layouts=layouts) for row in rows]


def _num(row: dict[str, str], col: str, default: float | None = None) -> float | None:
    text = row.get(col, "")
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _int(row: dict[str, str], col: str, default: int | None = None) -> int | None:
    value = _num(row, col)
    return default if value is None else int(value)


def _text(row: dict[str, str], col: str) -> str:
    return row.get(col, "").lower()


def _stated_layouts(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """Most common stated layout per (source, model): what a row without one inherits."""
    seen: dict[tuple[str, str], Counter] = {}
    for row in rows:
        if row.get("tp") and row.get("pp"):
            layout = tuple((c, row.get(c, "")) for c in ("tp", "pp", "cp", "ep", "etp", "vp", "micro_batch"))
            seen.setdefault((row["source"], row["model_name"]), Counter())[layout] += 1
    return {key: dict(c.most_common(1)[0][0]) for key, c in seen.items()}


def map_row(row: dict[str, str], *, layouts: dict[tuple[str, str], dict[str, str]] | None = None) -> PublishedRun:
    runtime = match_framework(row.get("framework", ""))
    base = {"row_id": row["row_id"], "source": row["source"], "model": row["model_name"],
            "n_gpus": _int(row, "n_gpus", 0), "framework": runtime.name}
    if not (row.get("tp") and row.get("pp")):
        inherited = (layouts or {}).get((row["source"], row["model_name"]))
        if inherited is None:
            return PublishedRun(**base, measured_tokens_per_s_per_gpu=None, reason="parallel layout not stated")
        row = row | {k: v for k, v in inherited.items() if not row.get(k)}
    try:
        model = model_table(row, runtime=runtime)
        job = job_table(row, runtime=runtime, pp=_int(row, "pp", 1))
        scenario = scenario_from_dict({"model": model, "cluster": cluster_table(row), "job": job},
                                      base_dir=Path("."), name=f"row-{row['row_id']}", source=f"row {row['row_id']}")
        plan = make_plan(row, scenario, runtime=runtime)
        check(plan, scenario)
        measured = measured_tokens_per_s(row, scenario)
    except (ScenarioError, ValueError) as err:
        return PublishedRun(**base, measured_tokens_per_s_per_gpu=None, reason=str(err).splitlines()[0])
    return PublishedRun(**base, measured_tokens_per_s_per_gpu=measured, scenario=scenario, plan=plan,
                        recompute_stated=bool(_text(row, "recompute")))


def _arch_int(row: dict[str, str], pattern: str) -> int | None:
    """An integer the row's architecture note states ('head_dim 64', 'first 3 layers dense')."""
    m = re.search(pattern, _text(row, "arch_source"))
    return int(m.group(1)) if m else None


def model_table(row: dict[str, str], *, runtime: FrameworkRuntime) -> dict:
    """[model] fields (HF names) from the architecture columns and the arch_source note."""
    h, heads = _int(row, "hidden"), _int(row, "heads")
    experts = _int(row, "moe_experts", 0)
    ffn = _int(row, "ffn_hidden")
    gated = bool(experts) or (ffn is not None and ffn != 4 * h)
    table = {"name": row["model_name"], "num_hidden_layers": _int(row, "layers"), "hidden_size": h,
             "num_attention_heads": heads, "num_key_value_heads": _int(row, "kv_heads", heads),
             "vocab_size": _int(row, "vocab"), "max_position_embeddings": _int(row, "seq_len"),
             "hidden_act": "silu" if gated else "gelu", "norm": "rmsnorm" if gated else "layernorm",
             "position_embedding": "rope" if gated else "learned", "tie_word_embeddings": not gated}
    head_dim = _arch_int(row, r"head_dim (\d+)")
    if head_dim:
        table["head_dim"] = head_dim
    if "mla" in _text(row, "arch_source").split():
        table |= MLA_DEFAULTS | {"num_key_value_heads": heads}
    if not experts:
        table["intermediate_size"] = ffn or 4 * h
        if not gated:
            table |= {"attention_dropout": runtime.dropout, "hidden_dropout": runtime.dropout}
        return table
    expert_ffn = _int(row, "moe_ffn_hidden")
    shared_size = _arch_int(row, r"shared expert of (\d+)")
    shared = shared_size // expert_ffn if shared_size else (_arch_int(row, r"(\d+) shared") or 0)
    first_dense = _arch_int(row, r"first (\d+) layers? dense") or (1 if "first layer dense" in _text(row, "arch_source") else 0)
    table |= {"intermediate_size": ffn or expert_ffn, "num_local_experts": experts,
              "num_experts_per_tok": _int(row, "moe_topk", 2), "moe_intermediate_size": expert_ffn,
              "n_shared_experts": shared, "first_k_dense_replace": first_dense}
    if _balanced_routing(row):
        table["capacity_factor"] = 1.0
    return table


# Multi-head latent attention with unstated dimensions: DeepSeek-V2/V3's (the design's reference,
# arXiv 2405.04434 Sec. 2.1, deepseek-ai/DeepSeek-V3 config.json).
MLA_DEFAULTS = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                "v_head_dim": 128}


def _balanced_routing(row: dict[str, str]) -> bool:
    """Token dropping at capacity 1 or a force-balanced router: no expert exceeds its share."""
    notes = _text(row, "notes")
    return "capacity factor 1" in notes or "balanced" in notes


def cluster_table(row: dict[str, str]) -> dict:
    """[cluster]: the GPU's preset with the row's stated node size and link speeds."""
    gpu = _text(row, "gpu")
    preset = next((p for key, p in _GPU_PRESETS if key in gpu), None)
    if preset is None:
        raise ValueError(f"gpu: no preset for '{row['gpu']}'")
    per_node = _int(row, "gpus_per_node", 8)
    n = _int(row, "n_gpus")
    if n % per_node and n < per_node:
        per_node = n
    network = {}
    for col, field in (("intra_node_bw_GBps", "intra_node_gbs"), ("inter_node_bw_GBps_per_gpu", "inter_node_gbs")):
        if _num(row, col):
            network[field] = _num(row, col)
    if _int(row, "nvlink_domain") and _int(row, "nvlink_domain") != per_node:
        network["nvlink_domain"] = _int(row, "nvlink_domain")
    table = {"preset": preset, "num_nodes": max(1, n // per_node), "gpus_per_node": per_node}
    return table | ({"network": network} if network else {})


def _precision(row: dict[str, str]) -> str:
    text = _text(row, "precision")
    if "fp8" in text:
        return "fp8"
    return "fp16" if "fp16" in text and "bf16" not in text else "bf16"


def job_table(row: dict[str, str], *, runtime: FrameworkRuntime, pp: int) -> dict:
    precision = _precision(row)
    job = {"seq_len": _int(row, "seq_len"), "global_batch": _global_batch(row, pp=pp), "precision": precision,
           "framework": runtime.name}
    sharding, text = _text(row, "zero_stage_or_fsdp"), _text(row, "precision")
    if "torch ddp" in sharding:
        job["dp_comm_overlap"] = True  # torch DDP buckets overlap the backward whatever the stack
    if "pure" in text:  # FSDP PURE mixed precision: parameters, reduction and buffers in bf16
        job["optimizer"] = {"grad_reduce_bytes": 2}
    stated = _text(row, "framework") + " " + _text(row, "notes")
    if _COMPILED.search(stated):
        job["fusion"] = "compiled"  # the run states it compiled its blocks (Inductor fusion)
    return job


def _global_batch(row: dict[str, str], *, pp: int) -> int:
    if row.get("global_batch"):
        return _int(row, "global_batch")
    tp, cp = _int(row, "tp", 1), _int(row, "cp", 1)
    dp = _int(row, "n_gpus") // (tp * pp * cp)
    return 8 * pp * dp * _int(row, "micro_batch", 1)


def _recompute(row: dict[str, str], runtime: FrameworkRuntime) -> Recompute:
    text = _text(row, "recompute")
    if "activation_checkpointing false" in text:
        return Recompute.NONE
    if text.startswith("selective"):
        return Recompute.SELECTIVE
    if text.startswith("full") or "activation_checkpointing true" in text:
        return Recompute.FULL
    if text.startswith("none"):
        return Recompute.NONE
    return runtime.recompute


def _zero(row: dict[str, str], runtime: FrameworkRuntime) -> int:
    """The planner's ZeRO stage for a row. "ZeRO-k style" names a framework's own sharding scheme
    by its nearest ZeRO stage, so the runtime file says which of the planner's stages it is."""
    text = _text(row, "zero_stage_or_fsdp")
    if " style" in text:
        return runtime.zero_stage
    if not text or text.startswith("not stated"):
        return max(runtime.zero_stage, 1 if "distributed optimizer" in text else 0)
    if any(k in text for k in ("zero-3", "full_shard", "full shard", "fsdp2", "megatron-fsdp")):
        return 3
    if "shard_grad_op" in text or "zero-2" in text:
        return 2
    return 1 if "distributed optimizer" in text else 0


def make_plan(row: dict[str, str], scenario: Scenario, *, runtime: FrameworkRuntime) -> Plan:
    tp, pp, cp = _int(row, "tp", 1), _int(row, "pp", 1), _int(row, "cp", 1)
    n = scenario.cluster.world_size
    if n % (tp * pp * cp):
        raise ValueError(f"layout: tp*pp*cp = {tp * pp * cp} does not divide {n} GPUs")
    dp = n // (tp * pp * cp)
    moe = scenario.model.is_moe
    ep = _int(row, "ep") or _widest_ep(scenario.model.num_local_experts, dp * cp * tp) if moe else 1
    etp = _int(row, "etp") if moe else 1
    if etp is None:
        etp = tp if (dp * cp * tp) % (ep * tp) == 0 else 1
    vp = _int(row, "vp", 1)
    text = _text(row, "recompute")
    stated = "sequence parallel" in text and "no sequence parallel" not in text
    sp = tp > 1 and (runtime.sequence_parallel or stated)
    mbs = _int(row, "micro_batch")
    if mbs is None:
        local = scenario.job.global_batch // dp
        mbs = 1 if runtime.gradient_accumulation or pp > 1 else max(1, local)
    return Plan(dims={"tp": tp, "pp": pp, "dp": dp, "cp": cp, "ep": ep, "etp": etp},
                micro_batch_size=mbs, virtual_stages=vp,
                schedule="interleaved-1f1b" if vp > 1 else "1f1b", zero_stage=_zero(row, runtime),
                recompute=_recompute(row, runtime), sequence_parallel=sp)


def _widest_ep(experts: int, stage_gpus: int) -> int:
    return max(d for d in range(1, stage_gpus + 1) if stage_gpus % d == 0 and experts % d == 0)


def model_flops_per_token(scenario: Scenario, *, causal_half: bool = False) -> float:
    """Megatron / PaLM model FLOPs per token: 6 x GEMM parameters (active experts) + s^2 attention."""
    spec, seq = scenario.model, scenario.job.seq_len
    h, q = spec.hidden_size, spec.num_attention_heads * spec.attn_head_dim
    kv = spec.kv_heads * spec.attn_head_dim
    attn = 2 * h * q + 2 * h * kv
    mats = 3 if spec.hidden_act.gated else 2
    dense_mlp = mats * h * spec.intermediate_size
    moe_mlp = (spec.num_experts_per_tok + spec.n_shared_experts) * mats * h * spec.expert_intermediate_size
    moe_mlp += h * spec.num_local_experts
    total = 0.0
    for i in range(spec.num_hidden_layers):
        mlp = moe_mlp if spec.is_moe_layer(i) else dense_mlp
        total += 6 * (attn + mlp) + 12 * seq * q * (0.5 if causal_half else 1.0)
    return total + 6 * h * spec.vocab_size


def measured_tokens_per_s(row: dict[str, str], scenario: Scenario) -> float:
    """The row's throughput in tokens/s per GPU, undoing its own FLOP convention."""
    s, n = float(row["seq_len"]), float(row["n_gpus"])
    if _num(row, "measured_tokens_per_s_per_gpu"):
        return _num(row, "measured_tokens_per_s_per_gpu")
    if _num(row, "measured_iter_time_s"):
        return scenario.job.global_batch * s / (_num(row, "measured_iter_time_s") * n)
    if _num(row, "derived_tokens_per_s_per_gpu"):
        return _num(row, "derived_tokens_per_s_per_gpu")
    accounting = _text(row, "flops_accounting")
    if accounting.startswith("hw_flops_incl_recompute"):  # Narayanan Eq. 3
        l, h, v = float(row["layers"]), float(row["hidden"]), float(row["vocab"])
        per_token = 96 * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
        return _num(row, "measured_tflops_per_gpu") * 1e12 / per_token
    tflops = _num(row, "measured_tflops_per_gpu")
    if tflops is None and _num(row, "measured_mfu") and _num(row, "gpu_peak_tflops_bf16"):
        tflops = _num(row, "measured_mfu") * _num(row, "gpu_peak_tflops_bf16")
    if tflops is None or not accounting.startswith("model_flops"):
        raise ValueError("measurement: no tokens/s, iteration time or model-FLOP throughput to compare with")
    causal = "causal attention counted as s^2/2" in accounting or "s^2/2" in accounting
    return tflops * 1e12 / model_flops_per_token(scenario, causal_half=causal)
