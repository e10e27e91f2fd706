"""report.html from a results directory (plans.csv, result.json, trace.json, measurement.json).

The page is one self-contained file: plotly.js is embedded gzip-compressed and base64-encoded
(the raw 4.8 MB bundle alone would use up the 5 MB budget) and the browser inflates it with the
standard DecompressionStream API, so the page opens from disk with no network.
"""

from __future__ import annotations

import base64
import csv
import functools
import gzip
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import plotly
from pydantic import ValidationError

from planner.errors import UserError, expect_object, one_line, read_json, read_text
from planner.graph import cache_dir
from planner.report import figures as figs
from planner.report.figures import Figure
from planner.report.devicemap import group_summary, stage_rows
from planner.scenario import count_params
from planner.plan import Axis, Plan, plan_groups
from planner.report.files import PLAN_COLUMNS, Status
from planner.report.moe import moe_section
from planner.report.table import Plans, concat, first_of_each, read_plans
from planner.scenario import GIB, Scenario

MAX_POINTS = 3000  # Pareto scatter points; the front, the best and the top plans always stay
TABLE_FITS, TABLE_REJECTED = 200, 150
MAX_TRACE_EVENTS = 6000
TRACE_EMBED_BYTES = 1_000_000  # larger traces are linked, not embedded as a data: URI
DEVICE_MAP_GPUS = 256


@functools.cache
def plotly_js_gzip_b64() -> str:
    """plotly.js, gzipped and base64-encoded for embedding. Compressing its 4.8 MB takes ~0.3 s,
    so the result is kept in the planner cache (assets/, keyed by the plotly version)."""
    def build() -> str:
        from plotly.offline import get_plotlyjs  # only on a cache miss: plotly's figure layer costs ~0.05 s

        return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode()

    return _cached_asset(f"plotly-{plotly.__version__}.min.js.gz.b64", build)


def _cached_asset(name: str, build: Callable[[], str]) -> str:
    """assets/NAME from the planner cache, else built and stored there (atomically); an unwritable
    cache only costs the rebuild next time."""
    path = cache_dir() / "assets" / name
    try:
        return path.read_text()
    except OSError:
        pass
    text = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
    return text


def _template_cache() -> jinja2.BytecodeCache | None:
    """The compiled page template, kept in the planner cache (compiling it is ~0.1 s a run)."""
    path = cache_dir() / "assets" / "jinja"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(path))


@functools.cache
def plotly_template_json() -> str:
    """The plotly_white template, once per page: figures carry none (building each figure with it
    deep-copied the template, ~20 ms per figure), the page's script applies it to every layout.
    Kept in the planner cache beside plotly.js (keyed by the plotly version, which ships it)."""
    def build() -> str:
        from plotly.io import templates  # only on a cache miss, like get_plotlyjs above

        return json.dumps(templates["plotly_white"].to_plotly_json()).replace("</", "<\\/")

    return _cached_asset(f"plotly-{plotly.__version__}-white-template.json", build)


_RESULT_KEYS = ("scenario", "best", "detailed")  # what every report section reads from result.json
_REWRITE = "re-run `planner search --out DIR` to rewrite it"


def load_plans(path: Path) -> Plans:
    """plans.csv with its documented column types; UserError naming the file when it is not one."""
    read_text(path, what="plans.csv")  # missing / a directory / unreadable, named as such
    try:
        df = read_plans(path, string_columns=("reason", "plan"))
    except (ValueError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"not a plans table ({' '.join(str(err).split())[:120]})", file=path, fix=_REWRITE) from None
    missing = [c for c in PLAN_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"missing columns {missing}", file=path, fix=_REWRITE)
    return df


def render_html(out_dir: Path) -> str:
    """The whole page as a string (the caller writes it atomically). Every file is the machine's,
    but a user may have edited or truncated one: any structural problem names the file."""
    result_path = out_dir / "result.json"
    result = expect_object(read_json(result_path, what="result.json"), file=result_path, what="search result")
    missing = [k for k in _RESULT_KEYS if k not in result]
    if missing:
        raise UserError(f"missing key {missing[0]!r}", file=result_path, fix=_REWRITE)
    df = load_plans(out_dir / "plans.csv")
    trace_path = out_dir / "trace.json"
    trace_text = read_text(trace_path, what="trace") if trace_path.is_file() else '{"traceEvents": []}'
    measurement = _read_json(out_dir / "measurement.json")
    try:
        context = build_context(result, df, trace_text=trace_text, measurement=measurement)
    except UserError:
        raise
    except ValidationError as err:
        raise UserError(one_line(err), file=result_path, fix=_REWRITE) from None
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as err:
        detail = f"key {err.args[0]!r}" if isinstance(err, KeyError) else " ".join(str(err).split())[:160]
        raise UserError(f"malformed results ({type(err).__name__}: {detail})", file=out_dir, fix=_REWRITE) from None
    return _page_template().render(**context)


def _page_template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("planner.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             bytecode_cache=_template_cache())
    return env.get_template("report.html.j2")


def warm_assets() -> None:
    """Build the page's cached pieces (plotly.js compressed, its template, the compiled page
    template: ~0.3 s on an empty cache, nothing on a full one) before any page is rendered. The
    search calls it while a forked child traces the model, when this process would only wait."""
    plotly_js_gzip_b64()
    plotly_template_json()
    _page_template()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return expect_object(read_json(path, what=path.name), file=path, what=path.name)


def build_context(result: dict[str, Any], df: Plans, *, trace_text: str,
                  measurement: dict[str, Any] | None) -> dict[str, Any]:
    scenario = Scenario.model_validate(result["scenario"])
    best_id = result["best"]
    best = result["detailed"].get(str(best_id)) if best_id is not None else None
    charts: dict[str, Figure] = {}
    notes: dict[str, str] = {}
    _pareto_chart(df, charts, notes)
    _breakdown_charts(result, charts)
    trace_info = _timeline_chart(trace_text, charts, notes)
    devices = _device_map(best, scenario, charts) | {"mapping": result.get("device_mapping")} if best else None
    routing = (measurement or {}).get("routing")
    moe = moe_section(result, scenario, best, charts, routing=routing) if best and scenario.model.is_moe else None
    measured = _measured(measurement, result, charts, notes) if measurement else None
    return {
        "title": f"planner report: {scenario.name}",
        "summary": _summary(scenario, result, best, df),
        "baselines": _baselines(result, best),
        "table": _table(df, notes),
        "charts": {k: _fig_json(f) for k, f in charts.items()},
        "notes": notes, "trace": trace_info, "devices": devices, "moe": moe, "measured": measured,
        "plotly_gz_b64": plotly_js_gzip_b64(), "plotly_template": plotly_template_json(),
    }


def _fig_json(fig: Figure) -> str:
    """Figure JSON safe inside a <script> element (JSON.parse takes no NaN: those become null)."""
    try:
        text = json.dumps(fig, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(figs.finite(fig), separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def _summary(scenario: Scenario, result: dict[str, Any], best: dict[str, Any] | None, df: Plans) -> dict[str, Any]:
    model, cluster, job = scenario.model, scenario.cluster, scenario.job
    total, active = count_params(model)
    out = {
        "model": f"{model.name}: {total / 1e9:.1f}B parameters" + (f" ({active / 1e9:.1f}B active)" if model.is_moe else ""),
        "cluster": f"{cluster.name}: {cluster.num_nodes} x {cluster.gpus_per_node} {cluster.gpu.name} = {cluster.world_size} GPUs",
        "job": f"seq_len {job.seq_len}, global batch {job.global_batch}, {job.precision.value}" + (
            f"; documents: {job.sequences.mix or 'histogram'}, {job.sequences.packing.value}, balance "
            f"{job.sequences.balance.value}" if job.sequences is not None else ""),
        "counts": {s: int((df["status"] == s).sum()) for s in Status},
        "stats": result.get("stats") or {},
        "nothing_fits": result.get("nothing_fits"),
        "partition": result.get("partition"),
        "best": None,
    }
    if best is not None:
        est, plan = best["estimate"], Plan.model_validate(best["plan"])
        out["best"] = {
            "words": plan.describe(), "step_time_s": est["step_time_s"],
            "tokens_per_s_per_gpu": est["tokens_per_s_per_gpu"], "mfu": est["mfu"], "hfu": est.get("hfu"),
            "peak_gib": est["peak_memory_bytes"] / GIB, "capacity_gib": est["memory_capacity_bytes"] / GIB,
            "bubble_fraction": est.get("bubble_fraction"), "implausible": est.get("implausible"),
            "host_gib": (est.get("offloaded_bytes") or {}).get("host", 0.0) / GIB,
            "notes": est.get("notes") or {},
        }
    return out


BASELINE_NAMES = {"dp_zero3": "pure data parallel + ZeRO-3", "megatron_tp": "Megatron default (TP fills a node)"}


def _baselines(result: dict[str, Any], best: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Speed-up of the best plan over each naive baseline the search costed."""
    out = []
    for key, cid in result.get("baselines", {}).items():
        cand = result["detailed"][str(cid)]
        est = cand["estimate"]
        gain = None
        if best is not None and cand["fits"]:
            gain = best["estimate"]["tokens_per_s_per_gpu"] / est["tokens_per_s_per_gpu"]
        out.append({"name": BASELINE_NAMES.get(key, key), "plan": Plan.model_validate(cand["plan"]).describe(),
                    "fits": cand["fits"], "gain": gain, "tokens_per_s_per_gpu": est["tokens_per_s_per_gpu"],
                    "peak_gib": est["peak_memory_bytes"] / GIB, "reason": cand["reason"]})
    return out


def _pareto_chart(df: Plans, charts: dict[str, Figure], notes: dict[str, str]) -> None:
    costed = df.take(np.isin(df["status"], [Status.BEST, Status.FITS, Status.OOM]) & _notna(df["peak_memory_gib"]))
    if not len(costed):
        return
    points = decimate(costed, MAX_POINTS)
    if len(points) < len(costed):
        notes["pareto"] = f"{len(costed) - len(points)} of {len(costed)} costed plans not drawn (evenly thinned; plans.csv has all)"
    capacity = costed["memory_capacity_gib"][_notna(costed["memory_capacity_gib"])]
    charts["pareto"] = figs.pareto(points, capacity_gib=float(capacity[0]) if len(capacity) else None)


def _notna(column: np.ndarray) -> np.ndarray:
    return ~np.isnan(column) if column.dtype.kind == "f" else np.ones(len(column), dtype=bool)


def decimate(costed: Plans, limit: int) -> Plans:
    """At most `limit` rows: every Pareto/best/top-100 row, the rest thinned with an even stride."""
    if len(costed) <= limit:
        return costed
    keep = costed["pareto"] | (costed["status"] == Status.BEST) | (np.arange(len(costed)) < 100)
    rest = np.flatnonzero(~keep)
    room = max(0, limit - int(keep.sum()))
    stride = max(1, -(-len(rest) // room)) if room else len(rest) + 1
    return concat([costed.take(keep), costed.take(rest[::stride])])


def _breakdown_charts(result: dict[str, Any], charts: dict[str, Figure]) -> None:
    detailed = result["detailed"]
    ids = list(dict.fromkeys([result["best"], *result.get("top", [])[:7], *result.get("baselines", {}).values()]))
    ids = [i for i in ids if i is not None and detailed[str(i)]["estimate"] is not None]
    if ids:
        roles = {v: k for k, v in result.get("baselines", {}).items()} | {result["best"]: "best"}
        labels = [f"#{i} {roles.get(i, '')}".strip() for i in ids]
        plans = [Plan.model_validate(detailed[str(i)]["plan"]).describe() for i in ids]
        charts["time"] = figs.time_breakdown(labels, plans, [detailed[str(i)]["estimate"] for i in ids])
    best = detailed.get(str(result["best"]))
    if best and best["estimate"] and best["estimate"].get("stage_memory"):
        charts["memory"] = figs.memory_stages(best["estimate"])


def _timeline_chart(trace_text: str, charts: dict[str, Figure], notes: dict[str, str]) -> dict[str, Any]:
    events = json.loads(trace_text).get("traceEvents", [])
    raw = trace_text.encode()
    info = {"num_events": len(events), "bytes": len(raw), "data_uri": None}
    if len(raw) <= TRACE_EMBED_BYTES:
        info["data_uri"] = "data:application/json;base64," + base64.b64encode(raw).decode()
    if any(e.get("ph") == "X" for e in events):
        charts["timeline"], note = figs.timeline(events, max_events=MAX_TRACE_EVENTS)
        if note:
            notes["timeline"] = note
    return info


def _device_map(best: dict[str, Any], scenario: Scenario, charts: dict[str, Figure]) -> dict[str, Any]:
    plan, cluster = Plan.model_validate(best["plan"]), scenario.cluster
    groups = [g for g in plan_groups(plan) if g.degree > 1] or plan_groups(plan)[:1]
    gpn = cluster.gpus_per_node
    nodes_shown = max(1, min(cluster.num_nodes, DEVICE_MAP_GPUS // gpn))
    charts["devicemap"] = figs.device_map(groups, gpus_per_node=gpn, num_nodes_shown=nodes_shown)
    rows = [group_summary(g, gpus_per_node=gpn, nvlink_domain=cluster.nvlink_domain) for g in groups]
    stages = stage_rows(plan, cluster, num_blocks=scenario.model.num_hidden_layers)
    return {"rows": rows, "nodes_shown": nodes_shown, "num_nodes": cluster.num_nodes, "stages": stages}


def _table(df: Plans, notes: dict[str, str]) -> dict[str, Any]:
    """Top fitting plans and a sample of rejected ones (closest to fitting first, then one per reason)."""
    fits = df.where("status", Status.BEST, Status.FITS).head(TABLE_FITS)
    oom = df.where("status", Status.OOM).head(TABLE_REJECTED // 2)
    pruned = df.where("status", Status.PRUNED)
    firsts = first_of_each(pruned, "reason")  # one row per reason first, then the rest in file order
    order = np.concatenate([firsts, np.setdiff1d(np.arange(len(pruned)), firsts)])
    pruned = pruned.take(order[first_of_each(pruned.take(order), "candidate")])
    rejected = concat([oom, pruned.head(TABLE_REJECTED - len(oom))])
    shown = concat([fits, rejected])
    if len(shown) < len(df):
        notes["table"] = f"showing {len(shown)} of {len(df)} candidates ({len(fits)} fitting, {len(rejected)} rejected); plans.csv lists all"
    cols = ["candidate", "rank", "status", "plan", "step_time_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_gib",
            "bubble_fraction", "reason"]
    rows = [[_fmt(r[c]) for c in cols] for r in shown.records(cols)]
    return {"columns": cols, "rows": rows}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        value = 0.0 if abs(value) < 1e-9 else value  # float noise (a bubble of -1e-15 s) is no "-1e-15"
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _error_row(term: str, predicted: float, measured: float) -> dict[str, Any]:
    measured = float(measured)
    return {"term": term, "predicted": predicted, "measured": measured,
            "error": (predicted - measured) / measured if measured else None}


def _memory_rows(plan: Plan, est: dict[str, Any], measured_gib: list[float]) -> list[dict[str, Any]]:
    """Measured memory of each rank (up to 16) against the predicted total of that rank's stage."""
    stages = est.get("stage_memory") or []
    if not stages or len(measured_gib) != plan.dims.world_size:
        return []
    pp = next(g for g in plan_groups(plan) if g.axis == Axis.PP)
    stage_of = {int(r): s for row in pp.members for s, r in enumerate(row)}
    return [_error_row(f"memory_gib rank {r} (stage {stage_of[r]})", sum(stages[stage_of[r]].values()) / GIB, gib)
            for r, gib in enumerate(measured_gib[:16])]


def _same_plan(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Plans compared as Plans (defaults filled in), not as raw dicts."""
    try:
        return Plan.model_validate(a) == Plan.model_validate(b)
    except ValueError:
        return False


def _measured(measurement: dict[str, Any], result: dict[str, Any], charts: dict[str, Figure],
              notes: dict[str, str]) -> dict[str, Any] | None:
    """Predicted vs measured for the measured plan; a measured plan the search did not detail is
    named as itself, with its measurements and no prediction (never another plan's)."""
    detailed = result["detailed"]
    plan = measurement.get("plan")
    plan = json.loads(plan) if isinstance(plan, str) else plan
    match = next((c for c in detailed.values() if plan is not None and _same_plan(c["plan"], plan)), None)
    if match is None or match["estimate"] is None:
        notes["measured"] = ("the measured plan is not among this search's detailed plans, so there is no prediction "
                             "here; `planner estimate SCENARIO --plan PLAN.json` prices it")
        described = Plan.model_validate(plan).describe() if plan else "(unknown)"
        rows = [{"term": k, "predicted": float("nan"), "measured": float(measurement[k]), "error": None}
                for k in ("step_time_s", "tokens_per_s_per_gpu", "peak_memory_gib") if measurement.get(k) is not None]
        return {"rows": rows, "plan": described, "device": measurement.get("device"),
                "backend": measurement.get("backend"), "world_size": measurement.get("world_size")}
    est = match["estimate"]
    predicted = {"step_time_s": est["step_time_s"], "tokens_per_s_per_gpu": est["tokens_per_s_per_gpu"],
                 "peak_memory_gib": est["peak_memory_bytes"] / GIB}
    rows = [_error_row(k, v, measurement.get(k)) for k, v in predicted.items() if measurement.get(k) is not None]
    if rows:
        charts["measured"] = figs.predicted_vs_measured(rows)
    rows += _memory_rows(Plan.model_validate(match["plan"]), est, measurement.get("memory_gib") or [])
    return {"rows": rows, "plan": Plan.model_validate(match["plan"]).describe(),
            "device": measurement.get("device"), "backend": measurement.get("backend"),
            "world_size": measurement.get("world_size")}
