"""Named model presets and the Hugging Face config.json -> ModelSpec adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.errors import UserError, expect_object, one_line, read_json
from planner.scenario.spec import ModelSpec


def _gpt(name: str, *, layers: int, hidden: int, heads: int, vocab: int = 51200) -> ModelSpec:
    """GPT-2/3 style: LayerNorm, GELU, 4h FFN, biases, learned positions (Brown et al. 2020)."""
    return ModelSpec(
        name=name, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=4 * hidden,
        num_attention_heads=heads, vocab_size=vocab, hidden_act="gelu", norm="layernorm",
        position_embedding="learned", max_position_embeddings=2048, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True, attention_dropout=0.1, hidden_dropout=0.1,
    )


def _llama(name: str, *, layers: int, hidden: int, ffn: int, heads: int, kv: int, vocab: int,
           theta: float = 10000.0, max_pos: int = 4096) -> ModelSpec:
    return ModelSpec(
        name=name, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, rope_theta=theta,
        max_position_embeddings=max_pos,
    )


def _presets() -> dict[str, ModelSpec]:
    return _gpt_presets() | _llama_presets() | _moe_presets() | _tiny_presets()


def _gpt_presets() -> dict[str, ModelSpec]:
    p: dict[str, ModelSpec] = {}
    # GPT-3 family: Brown et al. 2020, "Language Models are Few-Shot Learners", Table 2.1.
    # Vocabulary 50257 padded to 51200 as Megatron-LM does. The 1.3B row lists 24 heads of 128,
    # which does not tile d_model=2048; 16 heads of 128 is what implementations use.
    for name, layers, hidden, heads in [
        ("gpt3-125m", 12, 768, 12), ("gpt3-350m", 24, 1024, 16), ("gpt3-760m", 24, 1536, 16),
        ("gpt3-1.3b", 24, 2048, 16), ("gpt3-2.7b", 32, 2560, 32), ("gpt3-6.7b", 32, 4096, 32),
        ("gpt3-13b", 40, 5120, 40), ("gpt3-175b", 96, 12288, 96),
    ]:
        p[name] = _gpt(name, layers=layers, hidden=hidden, heads=heads)
    # Megatron-LM weak-scaling sizes: Narayanan et al. 2021 (arXiv 2104.04473), Table 1;
    # heads from NVIDIA/Megatron-LM examples/academic_paper_scripts/sc21/run_table_1.sh.
    for name, layers, hidden, heads in [
        ("megatron-1.7b", 24, 2304, 24), ("megatron-3.6b", 30, 3072, 32),
        ("megatron-7.5b", 36, 4096, 32), ("megatron-18.4b", 40, 6144, 48),
        ("megatron-39.1b", 48, 8192, 64), ("megatron-76.1b", 60, 10240, 80),
        ("megatron-145.6b", 80, 12288, 96), ("megatron-310.1b", 96, 16384, 128),
        ("megatron-529.6b", 105, 20480, 128), ("megatron-1t", 128, 25600, 160),
    ]:
        p[name] = _gpt(name, layers=layers, hidden=hidden, heads=heads).model_copy(
            update={"tie_word_embeddings": True})
    return p


def _llama_presets() -> dict[str, ModelSpec]:
    p: dict[str, ModelSpec] = {}
    # Llama 2: Touvron et al. 2023 (arXiv 2307.09288) Table 1 + meta-llama/Llama-2-*-hf config.json.
    p["llama2-7b"] = _llama("llama2-7b", layers=32, hidden=4096, ffn=11008, heads=32, kv=32, vocab=32000)
    p["llama2-13b"] = _llama("llama2-13b", layers=40, hidden=5120, ffn=13824, heads=40, kv=40, vocab=32000)
    p["llama2-70b"] = _llama("llama2-70b", layers=80, hidden=8192, ffn=28672, heads=64, kv=8, vocab=32000)
    # Llama 3 / 3.1: Dubey et al. 2024 (arXiv 2407.21783) Table 3 + meta-llama config.json.
    for version, max_pos in (("llama3", 8192), ("llama3.1", 131072)):
        for size, layers, hidden, ffn, heads in [
            ("8b", 32, 4096, 14336, 32), ("70b", 80, 8192, 28672, 64), ("405b", 126, 16384, 53248, 128),
        ]:
            name = f"{version}-{size}"
            p[name] = _llama(name, layers=layers, hidden=hidden, ffn=ffn, heads=heads, kv=8,
                             vocab=128256, theta=500000.0, max_pos=max_pos)
    return p


def _moe_presets() -> dict[str, ModelSpec]:
    p: dict[str, ModelSpec] = {}
    # Mixtral: Jiang et al. 2024 (arXiv 2401.04088) Table 1 + mistralai/Mixtral-*-v0.1 config.json.
    p["mixtral-8x7b"] = _llama("mixtral-8x7b", layers=32, hidden=4096, ffn=14336, heads=32, kv=8,
                               vocab=32000, theta=1e6, max_pos=32768).model_copy(
        update={"num_local_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 14336})
    p["mixtral-8x22b"] = _llama("mixtral-8x22b", layers=56, hidden=6144, ffn=16384, heads=48, kv=8,
                                vocab=32768, theta=1e6, max_pos=65536).model_copy(
        update={"num_local_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16384})
    # Qwen2-57B-A14B: Qwen/Qwen2-57B-A14B config.json (shared expert 20480 = 8 x 2560).
    p["qwen2-57b-a14b"] = ModelSpec(
        name="qwen2-57b-a14b", num_hidden_layers=28, hidden_size=3584, intermediate_size=18944,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=151936, rope_theta=1e6,
        max_position_embeddings=32768, attention_bias=True, num_local_experts=64,
        num_experts_per_tok=8, moe_intermediate_size=2560, n_shared_experts=8,
    )
    # DeepSeek-V3: DeepSeek-AI 2024 (arXiv 2412.19437) Sec. 4.2 + deepseek-ai/DeepSeek-V3 config.json.
    # 671B total / 37B active; the multi-token-prediction module is not modelled.
    p["deepseek-v3"] = ModelSpec(
        name="deepseek-v3", num_hidden_layers=61, hidden_size=7168, intermediate_size=18432,
        num_attention_heads=128, num_key_value_heads=128, vocab_size=129280, max_position_embeddings=163840,
        num_local_experts=256, num_experts_per_tok=8, moe_intermediate_size=2048, n_shared_experts=1,
        first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128,
    )
    # A 1.9T-parameter, 384-expert MoE: HYPOTHETICAL, derived from the public Kimi K2 architecture
    # (moonshotai/Kimi-K2-Instruct config.json: 61 layers, hidden 7168, MLA, 384 routed experts
    # top-8 + 1 shared, first layer dense, vocab 163840) with the expert FFN widened 2048 -> 3840:
    # 1.92T total / 54B active parameters. No released model has this configuration.
    p["moe-1.9t-384e"] = ModelSpec(
        name="moe-1.9t-384e", num_hidden_layers=61, hidden_size=7168, intermediate_size=18432,
        num_attention_heads=64, num_key_value_heads=64, vocab_size=163840, max_position_embeddings=131072,
        num_local_experts=384, num_experts_per_tok=8, moe_intermediate_size=3840, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128,
    )
    return p


def _tiny_presets() -> dict[str, ModelSpec]:
    p: dict[str, ModelSpec] = {}
    # Tiny models for CPU runs and tests (ours).
    p["tiny-dense"] = ModelSpec(
        name="tiny-dense", num_hidden_layers=4, hidden_size=128, intermediate_size=352,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024,
    )
    p["tiny-moe"] = ModelSpec(
        name="tiny-moe", num_hidden_layers=4, hidden_size=128, intermediate_size=352,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024,
        num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
    )
    p["tiny-gpt"] = _gpt("tiny-gpt", layers=4, hidden=128, heads=4, vocab=512)
    p["tiny-mla"] = ModelSpec(
        name="tiny-mla", num_hidden_layers=4, hidden_size=128, intermediate_size=352,
        num_attention_heads=4, vocab_size=512, max_position_embeddings=1024, num_local_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=64, n_shared_experts=1, first_k_dense_replace=1,
        q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    )
    return p


PRESETS: dict[str, ModelSpec] = _presets()


def model_preset(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"model.preset: unknown model '{name}'; run `planner models` for the list")
    return PRESETS[name]


def count_params(spec: ModelSpec) -> tuple[int, int]:
    """Closed-form (total, active-per-token) parameter count; the graph extractor is the exact one."""
    h, v = spec.hidden_size, spec.vocab_size
    attn = _attention_params(spec)
    norms = 2 * h * (2 if spec.norm == "layernorm" else 1)
    dense_mlp = _mlp_params(spec, spec.intermediate_size)
    expert = _mlp_params(spec, spec.expert_intermediate_size)
    shared = _mlp_params(spec, spec.expert_intermediate_size * spec.n_shared_experts) if spec.n_shared_experts else 0
    total = active = 0
    for i in range(spec.num_hidden_layers):
        if spec.is_moe_layer(i):
            router = h * spec.num_local_experts
            total += attn + norms + router + shared + spec.num_local_experts * expert
            active += attn + norms + router + shared + spec.num_experts_per_tok * expert
        else:
            total += attn + norms + dense_mlp
            active += attn + norms + dense_mlp
    embed = v * h + (spec.max_position_embeddings * h if spec.position_embedding == "learned" else 0)
    head = 0 if spec.tie_word_embeddings else v * h
    final_norm = h * (2 if spec.norm == "layernorm" else 1)
    extra = embed + head + final_norm
    return total + extra, active + extra


def _attention_params(spec: ModelSpec) -> int:
    h, heads = spec.hidden_size, spec.num_attention_heads
    if spec.uses_mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        q = (h * spec.q_lora_rank + spec.q_lora_rank + spec.q_lora_rank * heads * qk) if spec.q_lora_rank else h * heads * qk
        kv = h * (spec.kv_lora_rank + spec.qk_rope_head_dim) + spec.kv_lora_rank
        kv += spec.kv_lora_rank * heads * (spec.qk_nope_head_dim + spec.v_head_dim)
        return q + kv + heads * spec.v_head_dim * h
    d = spec.attn_head_dim
    qkv = h * d * (heads + 2 * spec.kv_heads) + (d * (heads + 2 * spec.kv_heads) if spec.attention_bias else 0)
    out = heads * d * h + (h if spec.attention_bias and spec.mlp_bias else 0)
    return qkv + out


def _mlp_params(spec: ModelSpec, ffn: int) -> int:
    h = spec.hidden_size
    mats = 3 if spec.hidden_act.gated else 2
    bias = (ffn * (mats - 1) + h) if spec.mlp_bias else 0
    return mats * h * ffn + bias


def resolve_model_table(table: dict[str, Any], *, base_dir: Path) -> dict[str, Any]:
    """[model] as written (preset / hf_config / inline, with overrides) -> ModelSpec fields."""
    table = dict(table)
    preset = table.pop("preset", None)
    hf_config = table.pop("hf_config", None)
    if preset is not None and hf_config is not None:
        raise ValueError("model: give either preset or hf_config, not both")
    if preset is not None:
        if not isinstance(preset, str):
            raise UserError(f"must be a preset name (a string), not {type(preset).__name__}", field="model.preset",
                            fix="run `planner models` for the list")
        return model_preset(preset).model_dump() | table
    if hf_config is not None:
        if not isinstance(hf_config, str) or not hf_config.strip():
            raise UserError("must be the path of a Hugging Face config.json (a string)", field="model.hf_config",
                            fix='write hf_config = "path/to/config.json"')
        path = Path(hf_config) if Path(hf_config).is_absolute() else base_dir / hf_config
        return load_hf_config(path).model_dump() | table
    return table


def load_hf_config(path: Path, *, flag: str = "model.hf_config") -> ModelSpec:
    """A Hugging Face config.json -> ModelSpec; UserError naming the file and the key otherwise."""
    raw = expect_object(read_json(path, what="Hugging Face config.json", flag=flag), file=path,
                        what="Hugging Face config.json")
    name = path.parent.name if path.name == "config.json" else path.stem
    try:
        return ModelSpec.model_validate(hf_to_fields(raw, name=name))
    except KeyError as err:
        raise UserError(f"missing key {err.args[0]!r} that model_type {raw.get('model_type', '')!r} needs",
                        file=path, field=flag, fix="add it (see the model's Hugging Face config.json)") from None
    except (TypeError, ArithmeticError) as err:
        raise UserError(f"a field has the wrong type ({err})", file=path, field=flag,
                        fix="use numbers where Hugging Face configs have them") from None
    except ValidationError as err:
        raise UserError(one_line(err), file=path, field=flag) from None


_COMMON_KEYS = (
    "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "hidden_act", "tie_word_embeddings",
    "max_position_embeddings", "rope_theta", "attention_bias", "mlp_bias",
    "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
    "first_k_dense_replace", "moe_layer_freq", "q_lora_rank", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
)


def hf_to_fields(raw: dict[str, Any], *, name: str) -> dict[str, Any]:
    """Map a Hugging Face config.json (Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, DeepSeek, GPT-2)."""
    model_type = raw.get("model_type", "")
    if model_type == "gpt2":
        return _gpt2_fields(raw, name=name)
    fields = {k: raw[k] for k in _COMMON_KEYS if raw.get(k) is not None}
    fields["name"] = name
    match model_type:
        case "qwen2" | "qwen2_moe":
            fields.setdefault("attention_bias", True)  # Qwen2 has q/k/v biases without a flag
            if raw.get("num_experts"):
                fields["num_local_experts"] = raw["num_experts"]
                fields["moe_layer_freq"] = raw.get("decoder_sparse_step", 1)
                shared = raw.get("shared_expert_intermediate_size", 0)
                fields["n_shared_experts"] = shared // raw["moe_intermediate_size"] if shared else 0
        case "deepseek_v2" | "deepseek_v3":
            fields["num_local_experts"] = raw.get("n_routed_experts") or 0
            fields.pop("head_dim", None)
        case "mixtral":
            fields["moe_intermediate_size"] = raw["intermediate_size"]
    if fields.get("num_local_experts") and "moe_intermediate_size" not in fields:
        fields["moe_intermediate_size"] = fields.get("intermediate_size")
    return fields


def _gpt2_fields(raw: dict[str, Any], *, name: str) -> dict[str, Any]:
    hidden = raw["n_embd"]
    return {
        "name": name, "num_hidden_layers": raw["n_layer"], "hidden_size": hidden,
        "intermediate_size": raw.get("n_inner") or 4 * hidden, "num_attention_heads": raw["n_head"],
        "vocab_size": raw["vocab_size"], "hidden_act": raw.get("activation_function", "gelu_new"),
        "norm": "layernorm", "position_embedding": "learned",
        "max_position_embeddings": raw.get("n_positions", 1024), "tie_word_embeddings": True,
        "attention_bias": True, "mlp_bias": True,
    }
