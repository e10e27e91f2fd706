"""TP collectives under FP8 linears: inputs gathered in FP8, row-parallel outputs reduced in bf16
(torchao float8_tensor_parallel.py; an FP8 GEMM writes a 16-bit output)."""

from __future__ import annotations

import pytest

from planner.cost import TimeTerm, estimate
from planner.cost.fp8 import gemm_output_bytes
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.scenario import JobSpec, Precision, cluster_preset, model_preset


def _tp_seconds(precision: str, *, sp: bool) -> float:
    spec = model_preset("llama3-8b")
    cl = cluster_preset("dgx-h100", num_nodes=1)
    job = JobSpec(seq_len=8192, global_batch=8, precision=precision)
    graph = extract_graph(spec, seq_len=job.seq_len)
    plan = Plan.model_validate({"dims": {"tp": 8}, "micro_batch_size": 8, "sequence_parallel": sp})
    return estimate(graph, plan, hw=datasheet_profile(cl), cluster=cl, job=job).time_breakdown_s[TimeTerm.TP]


def test_fp8_gemm_outputs_are_16_bit():
    assert gemm_output_bytes(JobSpec(seq_len=8, global_batch=1, precision="fp8")) == 2.0
    assert gemm_output_bytes(JobSpec(seq_len=8, global_batch=1, precision="bf16")) == Precision.BF16.bytes


def test_fp8_sp_gathers_in_fp8_and_reduce_scatters_in_bf16():
    """With SP, half the TP bytes (the all-gathers) shrink to one byte under FP8, the
    reduce-scatters stay bf16: 3/4 of the bf16 traffic (large messages: bandwidth-bound)."""
    bf16, fp8 = _tp_seconds("bf16", sp=True), _tp_seconds("fp8", sp=True)
    assert fp8 / bf16 == pytest.approx(0.75, abs=0.03)


def test_fp8_without_sp_all_reduces_bf16_outputs():
    assert _tp_seconds("fp8", sp=False) == pytest.approx(_tp_seconds("bf16", sp=False), rel=1e-6)
