"""Plotly figures of the report, built from the saved results (plans.csv rows, result.json).

Each function returns a go.Figure whose data is never empty: a section without data is left out
of the page by report_html instead of drawing a blank chart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from planner.report.devicemap import AxisGroups
from planner.report.files import Status
from planner.report.table import Plans
from planner.scenario import GIB

FITS_COLOUR, OOM_COLOUR, BEST_COLOUR, FRONT_COLOUR = "#2a9d8f", "#e76f51", "#f4a261", "#264653"
STEP_TERMS = ("compute", "recompute", "exposed_comm", "bubble", "optimizer")  # add up to the step time
COMM_AXES = ("tp", "cp", "ep", "pp", "dp")  # communication time per axis, before overlap


def _layout(fig: go.Figure, *, title: str, x: str, y: str, **kw: Any) -> go.Figure:
    # no template here: the page applies plotly_white once to every figure (html.plotly_template_json)
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template=None,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, height=kw.pop("height", 420), **kw)
    return fig


def _hover(df: Plans) -> list[str]:
    mfu = np.where(np.isnan(df["mfu"]), 0, df["mfu"]) if df["mfu"].dtype.kind == "f" else df["mfu"]
    return [f"#{c} {p}<br>{s:.3g} s/step, MFU {m:.1%}" for c, p, s, m in
            zip(df["candidate"].tolist(), df["plan"].tolist(), df["step_time_s"].tolist(), mfu.tolist())]


def pareto(points: Plans, *, capacity_gib: float | None) -> go.Figure:
    """Throughput vs peak memory of every costed candidate; the front is the upper-left edge."""
    fig = go.Figure()
    for label, mask, colour in (("fits", points["fits"], FITS_COLOUR), ("OOM", ~points["fits"], OOM_COLOUR)):
        part = points.take(mask)
        fig.add_scatter(x=part["peak_memory_gib"], y=part["tokens_per_s_per_gpu"], mode="markers", name=label,
                        marker={"color": colour, "size": 6, "opacity": 0.7}, text=_hover(part), hoverinfo="text")
    front = points.take(points["pareto"])
    front = front.take(np.argsort(front["peak_memory_gib"], kind="quicksort"))  # pandas' sort_values
    if len(front):
        fig.add_scatter(x=front["peak_memory_gib"], y=front["tokens_per_s_per_gpu"], mode="lines+markers",
                        name="Pareto front", line={"color": FRONT_COLOUR, "shape": "hv"}, text=_hover(front),
                        hoverinfo="text")
    best = points.take(points["status"] == Status.BEST)
    fig.add_scatter(x=best["peak_memory_gib"], y=best["tokens_per_s_per_gpu"], mode="markers", name="best",
                    marker={"color": BEST_COLOUR, "size": 16, "symbol": "star", "line": {"width": 1}},
                    text=_hover(best), hoverinfo="text")
    memory = points["peak_memory_gib"]
    log_x = bool(len(memory) and memory.min() > 0 and memory.max() / memory.min() > 20)
    if log_x:
        fig.update_xaxes(type="log")
    if capacity_gib:  # shapes on a log axis take log10 coordinates
        fig.add_vline(x=math.log10(capacity_gib) if log_x else capacity_gib, line_dash="dash",
                      annotation_text="GPU memory")
    return _layout(fig, title="Throughput vs peak memory (every costed plan)", x="peak memory per GPU (GiB)",
                   y="tokens/s per GPU")


def time_breakdown(labels: list[str], plans: list[str], estimates: list[dict[str, Any]]) -> go.Figure:
    """Left: where the step time goes (stacked). Right: comm time per axis before overlap."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("step time (stacked)", "communication per axis"),
                        column_widths=[0.6, 0.4])
    hover = "%{x}: %{y:.3g} s<br>%{customdata}"
    for term in STEP_TERMS:
        fig.add_bar(x=labels, y=[e["time_breakdown_s"].get(term, 0.0) for e in estimates], name=term,
                    customdata=plans, hovertemplate=hover, row=1, col=1)
    fig.add_scatter(x=labels, y=[e["step_time_s"] for e in estimates], mode="markers", name="step time",
                    marker={"symbol": "line-ew-open", "size": 30, "color": "black"}, row=1, col=1)
    for axis in COMM_AXES:
        values = [e["time_breakdown_s"].get(axis, 0.0) for e in estimates]
        if any(values):
            fig.add_bar(x=labels, y=values, name=f"{axis} comm", customdata=plans, hovertemplate=hover, row=1, col=2)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="seconds per step", row=1, col=1)
    return _layout(fig, title="Time breakdown: best plan, runners-up and baselines", x="", y="seconds per step",
                   height=460)


def memory_stages(estimate: dict[str, Any]) -> go.Figure:
    """Per pipeline stage, the named memory terms of one rank, stacked, against the capacity."""
    stages = estimate["stage_memory"]
    labels = [f"stage {i}" for i in range(len(stages))]
    terms = list(dict.fromkeys(t for s in stages for t in s))
    fig = go.Figure()
    for term in terms:
        fig.add_bar(x=labels, y=[s.get(term, 0.0) / GIB for s in stages], name=term)
    capacity = estimate.get("memory_capacity_bytes")
    if capacity:
        fig.add_hline(y=capacity / GIB, line_dash="dash", annotation_text="GPU memory")
    fig.update_layout(barmode="stack")
    return _layout(fig, title="Memory per GPU by pipeline stage (best plan)", x="", y="GiB")


def timeline(events: list[dict[str, Any]], *, max_events: int) -> tuple[go.Figure, str | None]:
    """Gantt chart of Chrome-trace 'X' events, one row per (pid, tid).

    Over `max_events`, back-to-back events of a row are merged into 'busy' spans so the whole
    step and its idle gaps (the bubble) stay visible; returns (figure, note on what was merged).
    """
    names = _thread_names(events)
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    note = None
    if len(spans) > max_events:
        merged = coalesce(spans, max_events=max_events)
        note = (f"{len(spans)} events drawn as {len(merged)}: each stage's first and last events as they are, "
                "back-to-back work in between merged into steady-state spans (trace.json has every event)")
        spans = sorted(merged, key=lambda e: e["ts"])[:max_events]
    fig = go.Figure()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in spans:
        by_kind.setdefault(str(e.get("cat") or e.get("name", "?")).split()[0], []).append(e)
    for kind, group in by_kind.items():  # numpy arrays: plotly validates lists element by element
        fig.add_bar(orientation="h", name=kind, base=np.array([e["ts"] / 1e3 for e in group]),
                    x=np.array([e["dur"] / 1e3 for e in group]),
                    y=np.array([names.get((e.get("pid"), e.get("tid")), f"{e.get('pid')}/{e.get('tid')}")
                                for e in group], dtype=object),
                    hovertext=np.array([str(e.get("name", "")) for e in group], dtype=object), hoverinfo="text+x",
                    marker={"line": {"width": 0}, **({"color": "#b8c0c8"} if kind == "steady-state" else {})})
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(barmode="overlay")
    return _layout(fig, title="Simulated timeline of one step (best plan)", x="time (ms)", y="",
                   height=max(300, 30 * len(names) + 150)), note


def coalesce(spans: list[dict[str, Any]], *, max_events: int) -> list[dict[str, Any]]:
    """Per row, keep the first and last events (warm-up and cool-down, where the bubble is) and
    merge the steady state in between: events that touch (gap <= 0.1% of the step) become one
    'busy' span."""
    t0 = min(e["ts"] for e in spans)
    tol = 1e-3 * (max(e["ts"] + e["dur"] for e in spans) - t0)
    rows: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for e in sorted(spans, key=lambda e: e["ts"]):
        rows.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    keep = max(1, max_events // (4 * len(rows)))
    out = []
    for row in rows.values():
        if len(row) <= 2 * keep:
            out += row
            continue
        out += row[:keep] + _merge_touching(row[keep:-keep], tol) + row[-keep:]
    return out


def _merge_touching(row: list[dict[str, Any]], tol: float) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for e in row:
        if merged and e["ts"] - (merged[-1]["ts"] + merged[-1]["dur"]) <= tol:
            last = merged[-1]
            last["dur"] = max(last["dur"], e["ts"] + e["dur"] - last["ts"])
            last["count"] += 1
            last["name"] = f"steady state: {last['count']} events"
        else:
            merged.append({"ph": "X", "pid": e.get("pid"), "tid": e.get("tid"), "ts": e["ts"], "dur": e["dur"],
                           "cat": "steady-state", "name": str(e.get("name", "")), "count": 1})
    return merged


def _thread_names(events: list[dict[str, Any]]) -> dict[tuple[Any, Any], str]:
    """Row labels from the trace's thread_name metadata, else 'pid/tid', in first-seen order."""
    names: dict[tuple[Any, Any], str] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name"))
    for e in events:
        key = (e.get("pid"), e.get("tid"))
        if e.get("ph") == "X" and key not in names:  # the simulator's layout: pid 0, tid = stage
            names[key] = f"stage {key[1]}" if key[0] in (0, None) else f"pid {key[0]} / tid {key[1]}"
    return names


def device_map(groups: list[AxisGroups], *, gpus_per_node: int, num_nodes_shown: int) -> go.Figure:
    """A node x GPU grid per axis, coloured by group; a dropdown switches the axis."""
    shown = num_nodes_shown * gpus_per_node
    fig = go.Figure()
    for i, g in enumerate(groups):
        gid = g.group_of[:shown].reshape(num_nodes_shown, gpus_per_node)
        ranks = np.arange(shown).reshape(num_nodes_shown, gpus_per_node)
        text = np.array([[f"GPU {r} (node {r // gpus_per_node}, local {r % gpus_per_node})<br>{g.axis.value} "
                          f"group {k}" for r, k in zip(rrow, krow)] for rrow, krow in zip(ranks, gid)], dtype=object)
        fig.add_heatmap(z=gid % 20, text=text, hoverinfo="text", colorscale="Turbo", showscale=False,
                        visible=i == 0, name=g.axis.value, xgap=2, ygap=2,
                        x=[f"gpu {j}" for j in range(gpus_per_node)], y=[f"node {n}" for n in range(num_nodes_shown)])
    buttons = [{"label": f"{g.axis.value} ({g.degree})", "method": "update",
                "args": [{"visible": [j == i for j in range(len(groups))]}]} for i, g in enumerate(groups)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1, "y": 1.12, "xanchor": "right", "yanchor": "bottom"}])
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title="Device map: same colour = same group", x="", y="",
                   height=max(260, 26 * num_nodes_shown + 140))


def expert_placement(placement: list[list[int]], *, layer_ids: list[int]) -> go.Figure:
    """Which EP rank hosts each expert, per MoE layer."""
    fig = go.Figure()
    fig.add_heatmap(z=np.asarray(placement), colorscale="Turbo", colorbar={"title": "EP rank"},
                    y=[f"layer {i}" for i in layer_ids], hovertemplate="expert %{x}, %{y}: EP rank %{z}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title="Expert placement (best plan)", x="expert", y="",
                   height=max(300, 12 * len(layer_ids) + 150))


def per_rank_comparison(series: dict[str, list[float]], *, title: str, y: str) -> go.Figure:
    """Grouped bars per EP rank, e.g. predicted all-to-all of the placement vs round-robin."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_bar(x=[f"rank {r}" for r in range(len(values))], y=values, name=name)
    fig.update_layout(barmode="group")
    return _layout(fig, title=title, x="EP rank", y=y)


def predicted_vs_measured(rows: list[dict[str, Any]]) -> go.Figure:
    """One panel per term (units differ), predicted next to measured."""
    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=[r["term"] for r in rows])
    for i, r in enumerate(rows, start=1):
        fig.add_bar(x=["predicted", "measured"], y=[r["predicted"], r["measured"]], showlegend=False,
                    marker={"color": [FRONT_COLOUR, BEST_COLOUR]}, row=1, col=i)
    return _layout(fig, title="Predicted vs measured", x="", y="", height=360)
