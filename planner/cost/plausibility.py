"""Plausibility: a predicted MFU above the best any published run reached on that GPU and model class.

The table holds the best model-FLOP utilisation published for each (GPU family, dense or MoE,
16-bit or FP8) class, against the peak of that precision, each with its source. A prediction
above it is not impossible, but nobody has shown it; the estimate then carries a reason, and the
report shows it, so an optimistic cost model cannot silently steer a search.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.scenario import GpuFamily


@dataclass(frozen=True, slots=True)
class PublishedBest:
    mfu: float
    source: str


# (family, "dense" | "moe", "16bit" | "fp8") -> best published MFU against that precision's peak.
BEST_PUBLISHED_MFU: dict[tuple[str, str, str], PublishedBest] = {
    ("a100", "dense", "16bit"): PublishedBest(0.563, "Korthikanti et al. 2022 / Megatron-LM README (May 2022): "
                                              "GPT 1T, selective recompute + SP, 512 A100"),
    ("h100", "dense", "16bit"): PublishedBest(0.49, "Megatron-Core r0.8 README weak scaling: GPT 16B on 192 H100"),
    ("h100", "moe", "16bit"): PublishedBest(0.493, "Liu et al. 2025, MoE Parallel Folding Table 3: Mixtral 8x22B, "
                                            "128 H100"),
    ("h100", "dense", "fp8"): PublishedBest(0.449, "NeMo 24.07 performance summary: GPT3-175B FP8 on 512 H100 "
                                            "(887 TFLOP/s of 1979)"),
    ("h100", "moe", "fp8"): PublishedBest(0.118, "Megatron-Bridge 25.11: Qwen3-235B-A22B FP8 on 256 H100"),
    ("b200", "dense", "fp8"): PublishedBest(0.370, "Megatron-Bridge 25.11: Llama 3.1 405B FP8 on 128 B200"),
    ("b200", "moe", "16bit"): PublishedBest(0.099, "Megatron-Bridge 25.11: GPT-OSS 120B bf16 on 64 B200"),
    ("b200", "moe", "fp8"): PublishedBest(0.124, "Megatron-Bridge 25.11: DeepSeek-V3 MXFP8 on 256 B200"),
}
# Published bests of a class sit within a few points of each other (A100 dense: 56.3% GPT 1T,
# 55.2% MegaScale 175B on 12,288 GPUs, 54.2% MT-NLG 530B); a prediction inside that band is as
# good as the best-tuned runs ever shown and is flagged too.
BEST_BAND = 0.04


def implausibility(mfu: float, *, family: GpuFamily, moe: bool, fp8: bool) -> str | None:
    """Why this MFU is above anything published for its class (None when it is not, or no data)."""
    key = (family.die.value, "moe" if moe else "dense", "fp8" if fp8 else "16bit")
    best = BEST_PUBLISHED_MFU.get(key)
    if best is None or mfu <= best.mfu - BEST_BAND:
        return None
    where = "above" if mfu > best.mfu else "within 4 points of"
    return (f"predicted MFU {mfu:.1%} is {where} the best published {key[1]} {key[2]} run on {key[0].upper()} "
            f"({best.mfu:.1%}, {best.source}); only the best-tuned runs reach this, treat it as optimistic")
