"""`planner validate CSV`: published runs -> scenarios + plans -> the same estimate users get -> error table.

Rows are mapped by scenario/published.py (the row's framework text picks the runtime); each is
priced with the datasheet profile of its cluster, exactly as `planner estimate` prices a plan. A
row that cannot be mapped counts as 100% error and is listed with its reason.

--loso: the only constants fitted end to end are the large-GEMM ceilings per GPU family
(hardware/datasheets.GEMM_CEILING). Leaving out one source at a time, each family's ceiling is
refit (grid search, minimum MAPE) on the other sources' rows of that family and the left-out
source is predicted with the refit value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from planner.cost import estimate
from planner.graph import extract_graph
from planner.hardware import datasheet_profile, gemm_ceiling
from planner.plan import Recompute
from planner.scenario import Precision
from planner.scenario.published import PublishedRun, load_runs
from planner.scenario.spec import ModelSpec

UNMAPPED_ERROR = 1.0
# Ceiling grid for --loso: relative to the shipped value, +-20% in 2.5% steps.
LOSO_SCALES = tuple(0.8 + 0.025 * i for i in range(17))
# Fine-grained MoE: many small experts (DeepSeekMoE, Dai et al. 2024: 64+ routed experts, each a
# fraction of the dense FFN); long context: 16K tokens and beyond (where attention outweighs the
# linear layers of mid-size models and CP comes in);
# small scale: one or two nodes (the runs where fixed per-step costs weigh most).
FINE_GRAINED_EXPERTS = 64
LONG_CONTEXT_TOKENS = 16384
SMALL_SCALE_GPUS = 16


class RowClass(StrEnum):
    """Classes of runs the model has been wrong on as a whole (issue 11); a row can be in several."""

    DENSE = "dense"
    MOE = "moe"
    FINE_GRAINED_MOE = "fine-grained moe"
    LONG_CONTEXT = "long context"
    FP8 = "fp8"
    SMALL_SCALE = "small scale"


def row_classes(run: PublishedRun) -> tuple[RowClass, ...]:
    if run.scenario is None:
        return ()
    model, job = run.scenario.model, run.scenario.job
    experts = model.num_local_experts
    out = [RowClass.MOE if experts else RowClass.DENSE]
    if experts >= FINE_GRAINED_EXPERTS:
        out.append(RowClass.FINE_GRAINED_MOE)
    if job.seq_len >= LONG_CONTEXT_TOKENS:
        out.append(RowClass.LONG_CONTEXT)
    if job.precision == Precision.FP8:
        out.append(RowClass.FP8)
    if run.n_gpus <= SMALL_SCALE_GPUS:
        out.append(RowClass.SMALL_SCALE)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class RowResult:
    row_id: str
    source: str
    model: str
    n_gpus: int
    framework: str
    plan: str
    measured: float | None
    predicted: float | None
    error: float  # |predicted / measured - 1|; 1.0 when unmapped
    signed_error: float | None
    mfu: float | None
    reason: str | None
    classes: tuple[RowClass, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationResult:
    rows: list[RowResult]
    loso_mape: float | None = None

    @property
    def mapped(self) -> int:
        return sum(r.reason is None for r in self.rows)

    @property
    def mape(self) -> float:
        return sum(r.error for r in self.rows) / max(1, len(self.rows))

    @property
    def max_error(self) -> float:
        return max((r.error for r in self.rows), default=0.0)

    def by_source(self) -> dict[str, tuple[int, float, float]]:
        groups: dict[str, list[float]] = {}
        for r in self.rows:
            groups.setdefault(r.source, []).append(r.error)
        return {s: (len(e), sum(e) / len(e), max(e)) for s, e in groups.items()}

    def by_class(self) -> dict[RowClass, tuple[int, float, float]]:
        groups: dict[RowClass, list[float]] = {}
        for r in self.rows:
            for c in r.classes:
                groups.setdefault(c, []).append(r.error)
        return {c: (len(groups[c]), sum(groups[c]) / len(groups[c]), max(groups[c])) for c in RowClass if c in groups}

    def summary_line(self) -> str:
        return (f"rows {len(self.rows)}, mapped {self.mapped}, MAPE {self.mape:.1%}, "
                f"max {self.max_error:.1%}")


@lru_cache(maxsize=128)
def _graph(spec: ModelSpec, seq_len: int):
    return extract_graph(spec, seq_len=seq_len)


def predict(run: PublishedRun, *, ceiling_scale: float = 1.0):
    """The Estimate `planner estimate` gives for this row's scenario and plan (datasheet profile)."""
    sc = run.scenario
    ceiling = gemm_ceiling(sc.cluster.gpu) * ceiling_scale
    hw = datasheet_profile(sc.cluster, ceiling=ceiling)
    return estimate(_graph(sc.model, sc.job.seq_len), run.plan, hw=hw, cluster=sc.cluster, job=sc.job)


def fitting_run(run: PublishedRun) -> PublishedRun:
    """A row whose recompute was not stated, with the least recompute under which its plan fits
    (the measured run fit in memory). When our memory model fits none of them, the run still fit
    on the real GPU, so our estimate is high: the row gets the recompute with the smallest
    predicted peak (the one nearest to fitting), never a setting that needs more memory than
    another that also fails. A stated recompute is kept."""
    if run.reason is not None or run.recompute_stated:
        return run
    order = (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL)
    peaks: list[tuple[float, PublishedRun]] = []
    for recompute in order[order.index(run.plan.recompute):]:
        candidate = replace(run, plan=run.plan.model_copy(update={"recompute": recompute}))
        est = predict(candidate)
        if est.fits:
            return candidate
        peaks.append((est.peak_memory_bytes, candidate))
    return min(peaks, key=lambda p: p[0])[1]


def _result(run: PublishedRun, *, ceiling_scale: float = 1.0) -> RowResult:
    base = {"row_id": run.row_id, "source": run.source, "model": run.model, "n_gpus": run.n_gpus,
            "framework": run.framework, "classes": row_classes(run)}
    if run.reason is not None:
        return RowResult(**base, plan="-", measured=None, predicted=None, error=UNMAPPED_ERROR, signed_error=None,
                         mfu=None, reason=run.reason)
    est = predict(run, ceiling_scale=ceiling_scale)
    err = est.tokens_per_s_per_gpu / run.measured_tokens_per_s_per_gpu - 1
    return RowResult(**base, plan=run.plan.describe(), measured=run.measured_tokens_per_s_per_gpu,
                     predicted=est.tokens_per_s_per_gpu, error=abs(err), signed_error=err, mfu=est.mfu, reason=None)


def validate_csv(path: str | Path, *, loso: bool = False) -> ValidationResult:
    runs = [fitting_run(run) for run in load_runs(path)]
    rows = [_result(run) for run in runs]
    return ValidationResult(rows=rows, loso_mape=_loso_mape(runs) if loso else None)


def _family(run: PublishedRun) -> str:
    return run.scenario.cluster.gpu.family.value


def _loso_mape(runs: list[PublishedRun]) -> float:
    """Leave-one-source-out MAPE with each GPU family's GEMM ceiling refit on the other sources."""
    mapped = [r for r in runs if r.reason is None]
    errors = {s: {r.row_id: _result(r, ceiling_scale=s).error for r in mapped} for s in LOSO_SCALES}
    total = [UNMAPPED_ERROR for r in runs if r.reason is not None]
    for source in {r.source for r in mapped}:
        held = [r for r in mapped if r.source == source]
        for family in {_family(r) for r in held}:
            train = [r.row_id for r in mapped if r.source != source and _family(r) == family]
            best = min(LOSO_SCALES, key=lambda s: (sum(errors[s][i] for i in train), abs(s - 1.0))) if train else 1.0
            total += [errors[best][r.row_id] for r in held if _family(r) == family]
    return sum(total) / max(1, len(total))


def result_json(result: ValidationResult) -> str:
    return json.dumps({"rows": [asdict(r) for r in result.rows], "mapped": result.mapped, "mape": result.mape,
                       "max_error": result.max_error, "loso_mape": result.loso_mape,
                       "by_source": {s: {"rows": n, "mape": m, "max": x} for s, (n, m, x) in result.by_source().items()},
                       "by_class": {c: {"rows": n, "mape": m, "max": x} for c, (n, m, x) in result.by_class().items()}},
                      indent=2)


def print_result(result: ValidationResult, *, console) -> None:
    from rich.table import Table

    table = Table("row", "model", "GPUs", "framework", "plan", "measured tok/s/GPU", "predicted", "error",
                  title="published runs: measured vs predicted")
    for r in result.rows:
        if r.reason is not None:
            table.add_row(r.row_id, r.model[:26], str(r.n_gpus), r.framework, "-", "-", "-", f"unmapped: {r.reason}")
            continue
        table.add_row(r.row_id, r.model[:26], str(r.n_gpus), r.framework, r.plan[:48], f"{r.measured:,.1f}",
                      f"{r.predicted:,.1f}", f"{r.signed_error:+.1%}")
    console.print(table)
    sources = Table("source", "rows", "MAPE", "max", title="per source")
    for source, (n, mape, worst) in result.by_source().items():
        sources.add_row(source[:70], str(n), f"{mape:.1%}", f"{worst:.1%}")
    console.print(sources)
    classes = Table("class", "rows", "MAPE", "max", title="per class (a row can be in several)")
    for cls, (n, mape, worst) in result.by_class().items():
        classes.add_row(cls.value, str(n), f"{mape:.1%}", f"{worst:.1%}")
    console.print(classes)
    if result.loso_mape is not None:
        console.print(f"leave-one-source-out (GEMM ceiling per GPU family refit without the source): "
                      f"MAPE {result.loso_mape:.1%}")
    console.print(result.summary_line(), highlight=False)
