"""Plotly figures of the report, built from the saved results (plans.csv rows, result.json).

Each function returns a figure as plain JSON-ready dicts ({"data": [...], "layout": {...}},
plotly.js's own figure format: https://plotly.com/javascript/reference/) whose data is never
empty: a section without data is left out of the page by report/html.py instead of drawing a
blank chart. Plain dicts, not plotly.graph_objects: validating every property in Python cost the
report ~0.2 s a run for a page plotly.js reads the same either way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from planner.report.devicemap import AxisGroups
from planner.report.files import Status
from planner.report.table import Plans
from planner.scenario import GIB

Figure = dict[str, Any]  # {"data": [trace, ...], "layout": {...}}, as Plotly.newPlot takes them

FITS_COLOUR, OOM_COLOUR, BEST_COLOUR, FRONT_COLOUR = "#2a9d8f", "#e76f51", "#f4a261", "#264653"
STEP_TERMS = ("compute", "recompute", "exposed_comm", "bubble", "optimizer")  # add up to the step time
COMM_AXES = ("tp", "cp", "ep", "pp", "dp")  # communication time per axis, before overlap
# Google's Turbo colormap (Mikhailov 2019) as plotly ships it (plotly.colors.sequential.Turbo);
# plotly.js has no "Turbo" name, so the scale goes in as evenly spaced [position, colour] stops.
_TURBO = ("#30123b", "#4145ab", "#4675ed", "#39a2fc", "#1bcfd4", "#24eca6", "#61fc6c", "#a4fc3b", "#d1e834",
          "#f3c63a", "#fe9b2d", "#f36315", "#d93806", "#b11901", "#7a0402")
TURBO = [[i / (len(_TURBO) - 1), c] for i, c in enumerate(_TURBO)]
# make_subplots' default gap between columns (plotly.subplots: horizontal_spacing = 0.2 / cols)
_SUBPLOT_SPACING = 0.2


def _figure(data: list[dict[str, Any]], *, title: str, x: str, y: str, height: int = 420,
            layout: dict[str, Any] | None = None) -> Figure:
    """No template here: the page applies plotly_white once to every figure (html.plotly_template_json)."""
    lay = {"template": {}, "title": {"text": title}, "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
           "height": height, **(layout or {})}
    lay["xaxis"] = {**lay.get("xaxis", {}), "title": {"text": x}}
    lay["yaxis"] = {**lay.get("yaxis", {}), "title": {"text": y}}
    return {"data": data, "layout": lay}


def _values(column: np.ndarray) -> list[Any]:
    """A column as a JSON list; NaN and infinities become null (JSON has no NaN; plotly skips nulls)."""
    if column.dtype.kind != "f":
        return column.tolist()
    return [v if math.isfinite(v) else None for v in column.tolist()]


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, as plotly's JSON encoder writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _subplots(widths: list[float], titles: list[str]) -> dict[str, Any]:
    """One row of subplots: axis domains and title annotations as plotly.subplots.make_subplots lays them out."""
    spacing = _SUBPLOT_SPACING / len(widths)
    room = 1.0 - spacing * (len(widths) - 1)
    layout: dict[str, Any] = {"annotations": []}
    start = 0.0
    for i, (width, title) in enumerate(zip(widths, titles, strict=True)):
        end = start + width / sum(widths) * room
        suffix = str(i + 1) if i else ""
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [start, end]}
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": [0.0, 1.0]}
        layout["annotations"].append({"font": {"size": 16}, "showarrow": False, "text": title, "x": (start + end) / 2,
                                      "xanchor": "center", "xref": "paper", "y": 1.0, "yanchor": "bottom",
                                      "yref": "paper"})
        start = end + spacing
    return layout


def _hover(df: Plans) -> list[str]:
    mfu = np.where(np.isnan(df["mfu"]), 0, df["mfu"]) if df["mfu"].dtype.kind == "f" else df["mfu"]
    return [f"#{c} {p}<br>{s:.3g} s/step, MFU {m:.1%}" for c, p, s, m in
            zip(df["candidate"].tolist(), df["plan"].tolist(), df["step_time_s"].tolist(), mfu.tolist())]


def pareto(points: Plans, *, capacity_gib: float | None) -> Figure:
    """Throughput vs peak memory of every costed candidate; the front is the upper-left edge."""
    data = []

    def scatter(part: Plans, **kw: Any) -> dict[str, Any]:
        return {"type": "scatter", "x": _values(part["peak_memory_gib"]), "y": _values(part["tokens_per_s_per_gpu"]),
                "text": _hover(part), "hoverinfo": "text", **kw}

    for label, mask, colour in (("fits", points["fits"], FITS_COLOUR), ("OOM", ~points["fits"], OOM_COLOUR)):
        data.append(scatter(points.take(mask), mode="markers", name=label,
                            marker={"color": colour, "size": 6, "opacity": 0.7}))
    front = points.take(points["pareto"])
    front = front.take(np.argsort(front["peak_memory_gib"], kind="quicksort"))  # pandas' sort_values
    if len(front):
        data.append(scatter(front, mode="lines+markers", name="Pareto front",
                            line={"color": FRONT_COLOUR, "shape": "hv"}))
    data.append(scatter(points.take(points["status"] == Status.BEST), mode="markers", name="best",
                        marker={"color": BEST_COLOUR, "size": 16, "symbol": "star", "line": {"width": 1}}))
    memory = points["peak_memory_gib"]
    log_x = bool(len(memory) and memory.min() > 0 and memory.max() / memory.min() > 20)
    layout: dict[str, Any] = {"xaxis": {"type": "log"}} if log_x else {}
    if capacity_gib:  # shapes on a log axis take log10 coordinates (as plotly's add_vline places them)
        x = math.log10(capacity_gib) if log_x else capacity_gib
        layout["shapes"] = [{"type": "line", "line": {"dash": "dash"}, "x0": x, "x1": x, "xref": "x",
                             "y0": 0, "y1": 1, "yref": "y domain"}]
        layout["annotations"] = [{"showarrow": False, "text": "GPU memory", "x": x, "xanchor": "left", "xref": "x",
                                  "y": 1, "yanchor": "top", "yref": "y domain"}]
    return _figure(data, title="Throughput vs peak memory (every costed plan)", x="peak memory per GPU (GiB)",
                   y="tokens/s per GPU", layout=layout)


def time_breakdown(labels: list[str], plans: list[str], estimates: list[dict[str, Any]]) -> Figure:
    """Left: where the step time goes (stacked). Right: comm time per axis before overlap."""
    hover = "%{x}: %{y:.3g} s<br>%{customdata}"
    data = [{"type": "bar", "x": labels, "y": [e["time_breakdown_s"].get(term, 0.0) for e in estimates], "name": term,
             "customdata": plans, "hovertemplate": hover, "xaxis": "x", "yaxis": "y"} for term in STEP_TERMS]
    data.append({"type": "scatter", "x": labels, "y": [e["step_time_s"] for e in estimates], "mode": "markers",
                 "name": "step time", "marker": {"symbol": "line-ew-open", "size": 30, "color": "black"},
                 "xaxis": "x", "yaxis": "y"})
    for axis in COMM_AXES:
        values = [e["time_breakdown_s"].get(axis, 0.0) for e in estimates]
        if any(values):
            data.append({"type": "bar", "x": labels, "y": values, "name": f"{axis} comm", "customdata": plans,
                         "hovertemplate": hover, "xaxis": "x2", "yaxis": "y2"})
    layout = _subplots([0.6, 0.4], ["step time (stacked)", "communication per axis"]) | {"barmode": "stack"}
    return _figure(data, title="Time breakdown: best plan, runners-up and baselines", x="", y="seconds per step",
                   height=460, layout=layout)


def memory_stages(estimate: dict[str, Any]) -> Figure:
    """Per pipeline stage, the named memory terms of one rank, stacked, against the capacity."""
    stages = estimate["stage_memory"]
    labels = [f"stage {i}" for i in range(len(stages))]
    terms = list(dict.fromkeys(t for s in stages for t in s))
    data = [{"type": "bar", "x": labels, "y": [s.get(term, 0.0) / GIB for s in stages], "name": term} for term in terms]
    layout: dict[str, Any] = {"barmode": "stack"}
    capacity = estimate.get("memory_capacity_bytes")
    if capacity:  # plotly's add_hline: a dashed line across the plot, its label at the right end
        y = capacity / GIB
        layout["shapes"] = [{"type": "line", "line": {"dash": "dash"}, "x0": 0, "x1": 1, "xref": "x domain",
                             "y0": y, "y1": y, "yref": "y"}]
        layout["annotations"] = [{"showarrow": False, "text": "GPU memory", "x": 1, "xanchor": "right",
                                  "xref": "x domain", "y": y, "yanchor": "bottom", "yref": "y"}]
    return _figure(data, title="Memory per GPU by pipeline stage (best plan)", x="", y="GiB", layout=layout)


def timeline(events: list[dict[str, Any]], *, max_events: int) -> tuple[Figure, str | None]:
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
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in spans:
        by_kind.setdefault(str(e.get("cat") or e.get("name", "?")).split()[0], []).append(e)
    data = [{"type": "bar", "orientation": "h", "name": kind, "base": [e["ts"] / 1e3 for e in group],
             "x": [e["dur"] / 1e3 for e in group],
             "y": [names.get((e.get("pid"), e.get("tid")), f"{e.get('pid')}/{e.get('tid')}") for e in group],
             "hovertext": [str(e.get("name", "")) for e in group], "hoverinfo": "text+x",
             "marker": {"line": {"width": 0}, **({"color": "#b8c0c8"} if kind == "steady-state" else {})}}
            for kind, group in by_kind.items()]
    layout = {"barmode": "overlay", "yaxis": {"autorange": "reversed", "type": "category"}}
    return _figure(data, title="Simulated timeline of one step (best plan)", x="time (ms)", y="",
                   height=max(300, 30 * len(names) + 150), layout=layout), note


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


def device_map(groups: list[AxisGroups], *, gpus_per_node: int, num_nodes_shown: int) -> Figure:
    """A node x GPU grid per axis, coloured by group; a dropdown switches the axis."""
    shown = num_nodes_shown * gpus_per_node
    data = []
    for i, g in enumerate(groups):
        gid = g.group_of[:shown].reshape(num_nodes_shown, gpus_per_node)
        ranks = np.arange(shown).reshape(num_nodes_shown, gpus_per_node)
        text = [[f"GPU {r} (node {r // gpus_per_node}, local {r % gpus_per_node})<br>{g.axis.value} group {k}"
                 for r, k in zip(rrow, krow)] for rrow, krow in zip(ranks.tolist(), gid.tolist())]
        data.append({"type": "heatmap", "z": (gid % 20).tolist(), "text": text, "hoverinfo": "text",
                     "colorscale": TURBO, "showscale": False, "visible": i == 0, "name": g.axis.value, "xgap": 2,
                     "ygap": 2, "x": [f"gpu {j}" for j in range(gpus_per_node)],
                     "y": [f"node {n}" for n in range(num_nodes_shown)]})
    buttons = [{"label": f"{g.axis.value} ({g.degree})", "method": "update",
                "args": [{"visible": [j == i for j in range(len(groups))]}]} for i, g in enumerate(groups)]
    layout = {"updatemenus": [{"buttons": buttons, "x": 1, "y": 1.12, "xanchor": "right", "yanchor": "bottom"}],
              "yaxis": {"autorange": "reversed"}}
    return _figure(data, title="Device map: same colour = same group", x="", y="",
                   height=max(260, 26 * num_nodes_shown + 140), layout=layout)


def expert_placement(placement: list[list[int]], *, layer_ids: list[int]) -> Figure:
    """Which EP rank hosts each expert, per MoE layer."""
    data = [{"type": "heatmap", "z": np.asarray(placement).tolist(), "colorscale": TURBO,
             "colorbar": {"title": {"text": "EP rank"}}, "y": [f"layer {i}" for i in layer_ids],
             "hovertemplate": "expert %{x}, %{y}: EP rank %{z}<extra></extra>"}]
    return _figure(data, title="Expert placement (best plan)", x="expert", y="",
                   height=max(300, 12 * len(layer_ids) + 150), layout={"yaxis": {"autorange": "reversed"}})


def per_rank_comparison(series: dict[str, list[float]], *, title: str, y: str) -> Figure:
    """Grouped bars per EP rank, e.g. predicted all-to-all of the placement vs round-robin."""
    data = [{"type": "bar", "x": [f"rank {r}" for r in range(len(values))], "y": values, "name": name}
            for name, values in series.items()]
    return _figure(data, title=title, x="EP rank", y=y, layout={"barmode": "group"})


def predicted_vs_measured(rows: list[dict[str, Any]]) -> Figure:
    """One panel per term (units differ), predicted next to measured."""
    data = [{"type": "bar", "x": ["predicted", "measured"], "y": [r["predicted"], r["measured"]], "showlegend": False,
             "marker": {"color": [FRONT_COLOUR, BEST_COLOUR]}, "xaxis": f"x{i if i > 1 else ''}",
             "yaxis": f"y{i if i > 1 else ''}"} for i, r in enumerate(rows, start=1)]
    return _figure(data, title="Predicted vs measured", x="", y="", height=360,
                   layout=_subplots([1.0] * len(rows), [r["term"] for r in rows]))
