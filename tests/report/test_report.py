"""Report outputs: CSV columns, atomic writes, re-rendering, size bound, and the page in real Chromium."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import tempfile
import time
import functools
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import planner.report.html
import planner.report.write
from conftest import REPO
from planner.cli import app
from planner.plan import plan_groups
from planner.graph import extract_graph
from planner.hardware import datasheet_profile
from planner.plan import Plan
from planner.report import PLAN_COLUMNS, warm_assets, write_search_outputs
from planner.report import STEP_TERMS, coalesce
from planner.scenario import GIB, Scenario, load_scenario, scenario_from_dict
from planner.search import search

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


# ---- search results from the real search (graph tracer, datasheet profile, cost model) --------


@functools.cache
def search_result(name: str) -> tuple[Any, Scenario]:
    sc = load_scenario(REPO / "scenarios" / f"{name}.toml")
    graph, hw = extract_graph(sc.model, seq_len=sc.job.seq_len), datasheet_profile(sc.cluster)
    return search(graph, sc, hw=hw), sc  # search() prices the best plan's timeline itself


def ranked_best(result: Any) -> Any:
    return next(c for c in result.candidates if c.rank == 1)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Scenario]:
    result, sc = search_result("llama3-70b_h100x64")
    out = tmp_path_factory.mktemp("rep") / "llama70b"
    write_search_outputs(result, sc, out)
    return out, result, sc


# ---- files -------------------------------------------------------------------------------------


def test_csv_has_documented_columns_and_every_candidate(written: tuple[Path, Any, Scenario]) -> None:
    out, result, _ = written
    with (out / "plans.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == PLAN_COLUMNS
    documented = re.findall(r"^\| `([a-z_0-9`, ]+)` \|", (REPO / "reports" / "README.md").read_text(), re.M)
    names = {n.strip(" `") for cell in documented for n in cell.split(",")}
    assert set(PLAN_COLUMNS) <= names, f"undocumented columns: {set(PLAN_COLUMNS) - names}"
    assert sorted(int(r["candidate"]) for r in rows) == list(range(len(result.candidates)))
    assert rows[0]["status"] == "best" and sum(r["status"] == "best" for r in rows) == 1
    best = ranked_best(result).estimate  # the search's own pricing (the timeline copy is re-simulated)
    assert float(rows[0]["step_time_s"]) == pytest.approx(best.step_time_s, rel=1e-5)
    assert float(rows[0]["peak_memory_gib"]) == pytest.approx(best.peak_memory_bytes / GIB, rel=1e-5)
    assert rows[0]["plan"] == result.best.plan.describe()
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert all(r["reason"] and r["step_time_s"] == "" for r in pruned)
    oom = [r for r in rows if r["status"] == "oom"]
    assert oom and all(r["fits"] == "False" and "OOM" in r["reason"] for r in oom)
    terms = [sum(float(best_row[f"time_{t}_s"]) for t in STEP_TERMS) for best_row in rows[:1]]
    assert terms[0] == pytest.approx(best.step_time_s, rel=1e-4)  # the step-time terms add up
    fits = [float(r["tokens_per_s_per_gpu"]) for r in rows if r["status"] in ("best", "fits")]
    assert fits == sorted(fits, reverse=True)
    assert any(r["pareto"] == "True" for r in rows)


def test_json_outputs_round_trip(written: tuple[Path, Any, Scenario]) -> None:
    out, result, sc = written
    assert Plan.load(out / "plan.json") == result.best.plan
    saved = json.loads((out / "result.json").read_text())
    assert Scenario.model_validate(saved["scenario"]) == sc
    best = saved["detailed"][str(saved["best"])]
    assert best["estimate"]["step_time_s"] == pytest.approx(ranked_best(result).estimate.step_time_s)
    assert best["estimate"]["step_time_s"] == pytest.approx(result.best.estimate.step_time_s, rel=0.01)
    assert "timeline" not in best["estimate"]
    trace = json.loads((out / "trace.json").read_text())
    assert trace["traceEvents"] == result.best.estimate.timeline and trace["traceEvents"]
    assert set(saved["baselines"]) <= {"dp_zero3", "megatron_tp"} and saved["baselines"]


def test_report_rerenders_identically_without_search(written: tuple[Path, Any, Scenario], tmp_path: Path) -> None:
    out, _, _ = written
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "report.html").read_bytes() == (out / "report.html").read_bytes()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no result.json" in res.output


def test_warm_assets_fill_an_empty_cache_and_change_no_page(written: tuple[Path, Any, Scenario], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """report.warm_assets, which `planner search` runs while a child traces the model: the page's
    cached pieces (plotly.js gzipped, its template, the compiled page template) land in an empty
    cache, and the page rendered from them is byte for byte the one rendered before."""
    out, _, _ = written
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path / "cache"))
    for built_once in (planner.report.html.plotly_js_gzip_b64, planner.report.html.plotly_template_json):
        built_once.cache_clear()  # rebuilt from plotly, not the copies this process holds
    warm_assets()
    assets = tmp_path / "cache" / "assets"
    names = [p.name for p in assets.iterdir()]
    assert any(n.endswith(".min.js.gz.b64") for n in names) and any(n.endswith("-white-template.json") for n in names)
    assert any((assets / "jinja").iterdir())
    assert planner.report.html.render_html(out) == (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_no_partial_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   error: type[BaseException]) -> None:
    result, sc = search_result("tiny-dense_cpu4")
    out = tmp_path / "out"

    def boom(_: Path) -> str:
        raise error("interrupted while rendering")

    monkeypatch.setattr(planner.report.write, "render_html", boom)
    with pytest.raises(error):
        write_search_outputs(result, sc, out)
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary sibling
    monkeypatch.undo()
    write_search_outputs(result, sc, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(planner.report.write, "render_html", boom)
    with pytest.raises(error):
        write_search_outputs(result, sc, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_nothing_fits_report(tmp_path: Path) -> None:
    """70B on one 8 x A100-40GB node without offload: no plan fits; the page says so and lists the OOM plans."""
    raw = {"model": {"preset": "llama3-70b"}, "cluster": {"preset": "dgx-a100-40gb", "num_nodes": 1},
           "job": {"seq_len": 4096, "global_batch": 16}, "search": {"offload": []}}
    sc = scenario_from_dict(raw, base_dir=REPO, name="too-small", source="test")
    result = search(extract_graph(sc.model, seq_len=sc.job.seq_len), sc, hw=datasheet_profile(sc.cluster))
    assert result.best is None
    write_search_outputs(result, sc, tmp_path / "r")
    assert not (tmp_path / "r" / "plan.json").exists()
    html = (tmp_path / "r" / "report.html").read_text()
    assert result.nothing_fits in html
    assert 'data-status="pruned"' in html or 'data-status="oom"' in html


def test_rewrite_keeps_measurement(tmp_path: Path) -> None:
    result, sc = search_result("tiny-dense_cpu4")
    out = tmp_path / "out"
    write_search_outputs(result, sc, out, measurement=_measurement(result, sc))
    write_search_outputs(result, sc, out)
    assert json.loads((out / "measurement.json").read_text())["step_time_s"] > 0
    html = (out / "report.html").read_text()
    assert "Predicted vs measured" in html and "memory_gib rank 3 (stage" in html


def _measurement(result: Any, sc: Scenario) -> dict[str, Any]:
    """The executor's Measurement (executor/train.py) of the best plan, 10% slower than predicted."""
    from executor.train import Measurement

    est, world = result.best.estimate, sc.cluster.world_size
    routing = None
    if sc.model.is_moe:
        skew = [[1000 // (e + 1) for e in range(sc.model.num_local_experts)]]
        routing = {"num_experts": sc.model.num_local_experts, "layers": [{"layer": 0, "expert_tokens": skew[0]}],
                   "affinity": []}
    return Measurement(
        scenario=sc.name, model=sc.model.name, plan=json.loads(result.best.plan.to_json()), world_size=world,
        backend="gloo", device="cpu", steps=3, step_time_s=est.step_time_s * 1.1, step_times_s=[est.step_time_s * 1.1] * 3,
        tokens_per_s_per_gpu=est.tokens_per_s_per_gpu / 1.1, peak_memory_gib=est.peak_memory_bytes / GIB * 0.95,
        memory_gib=[est.peak_memory_bytes / GIB * 0.95] * world, losses=[10.4, 10.1, 9.9], routing=routing,
    ).model_dump(mode="json")


def test_timeline_thinning_keeps_ends_and_busy_time(written: tuple[Path, Any, Scenario]) -> None:
    """Merging the steady state keeps each stage's first/last events, covers every event, and
    only hides idle gaps shorter than 0.1% of the step."""
    _, result, _ = written
    spans = [e for e in result.best.estimate.timeline if e["ph"] == "X"]
    merged = coalesce([dict(e) for e in spans], max_events=200)
    assert len(merged) < len(spans) / 4
    tol = 1e-3 * (max(e["ts"] + e["dur"] for e in spans) - min(e["ts"] for e in spans))
    for stage in {e["tid"] for e in spans}:
        before = sorted((e for e in spans if e["tid"] == stage), key=lambda e: e["ts"])
        after = sorted((e for e in merged if e["tid"] == stage), key=lambda e: e["ts"])
        assert after[0] == before[0] and after[-1] == before[-1]
        for e in before:
            assert any(m["ts"] <= e["ts"] and e["ts"] + e["dur"] <= m["ts"] + m["dur"] + 1e-6 for m in after)
        gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(before, before[1:])]
        idle = sum(b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(after, after[1:]))
        assert sum(g for g in gaps if g > tol) - 1e-6 <= idle <= sum(g for g in gaps if g > 0) + 1e-6


def test_moe_loads_against_round_robin() -> None:
    """Contiguous placement of a skewed trace overloads rank 0; round-robin spreads the hot experts."""
    from planner.report import moe_section

    sc = load_scenario(REPO / "scenarios" / "mixtral-8x7b_h100x64.toml")
    plan = Plan.model_validate({"dims": {"dp": 16, "tp": 4, "ep": 4}})
    tokens = [800, 400, 200, 100, 100, 100, 100, 100]  # experts 0-1 on rank 0 when contiguous
    charts: dict[str, dict] = {}
    out = moe_section({"moe": None}, sc, {"plan": plan.model_dump(mode="json")}, charts,
                      routing={"num_experts": 8, "layers": [{"layer": 0, "expert_tokens": tokens}]})
    layers = sc.model.num_moe_layers
    assert out["loads"]["bottleneck_tokens"] == 1200 * layers  # rank 0 hosts experts 0 and 1
    assert out["loads"]["round_robin_bottleneck_tokens"] == 900 * layers  # rank 0 hosts experts 0 and 4
    assert out["loads"]["saving"] < 0  # the report shows contiguous is worse than round-robin here
    assert set(charts) == {"experts", "a2a"} and len(charts["experts"]["data"][0]["z"]) == layers


def test_device_map_groups_come_from_the_rank_grid() -> None:
    """The report's groups are planner.plan.rank_grid's (the executor's meshes read the same grid)."""
    plan = Plan.model_validate({"dims": {"dp": 4, "tp": 2, "pp": 2, "ep": 4}, "rank_order": ["dp", "pp", "tp", "cp"],
                                "expert_rank_order": ["edp", "pp", "etp", "ep"]})
    tp = next(g for g in plan_groups(plan) if g.axis == "tp")
    assert tp.members.shape == (8, 2) and sorted(tp.members.flatten().tolist()) == list(range(16))


@pytest.mark.slow
def test_405b_report_stays_under_5mb(tmp_path: Path) -> None:
    result, sc = search_result("llama3.1-405b_h100x16384")
    assert len(result.candidates) > 500
    write_search_outputs(result, sc, tmp_path / "r")
    html = (tmp_path / "r" / "report.html").read_text()
    assert len(html.encode()) < 5_000_000
    assert "plans.csv lists all" in html  # the table says how many rows it left out
    if len(result.best.estimate.timeline) > planner.report.html.MAX_TRACE_EVENTS:
        assert "steady-state spans" in html


# ---- the page in real headless Chromium ---------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium / chromium-driver not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_report(driver: Any, html: Path, screenshot: Path) -> dict[str, Any]:
    """Load the page offline, wait for the charts, return what rendered; save a full-page PNG."""
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(html.as_uri())
    deadline = time.monotonic() + 60
    while not driver.execute_script("return document.body.dataset.chartsReady") and time.monotonic() < deadline:
        time.sleep(0.1)
    state = driver.execute_script("""return {
        ready: document.body.dataset.chartsReady,
        charts: Array.from(document.querySelectorAll('div.chart')).map(d => ({
            id: d.id, traces: (d.data || []).length,
            points: (d.calcdata || []).reduce((n, c) => n + c.length, 0),
            svg: d.querySelectorAll('svg.main-svg').length})),
        rows: document.querySelectorAll('#plans tbody tr').length}""")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1400, "height": min(height, 16000), "deviceScaleFactor": 0.5, "mobile": False})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    state["console"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    state["requests"] = [json.loads(e["message"])["message"]["params"]["request"]["url"]
                         for e in driver.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]]
    return state


@pytest.mark.browser
@pytest.mark.parametrize("scenario", ["llama3-70b_h100x64", "mixtral-8x7b_h100x64"])
def test_report_renders_offline_in_chromium(browser: Any, tmp_path: Path, scenario: str) -> None:
    result, sc = search_result(scenario)
    out = tmp_path / scenario
    write_search_outputs(result, sc, out, measurement=_measurement(result, sc))
    state = open_report(browser, out / "report.html", tmp_path / "report.png")
    assert state["ready"] == "true", state
    assert not state["console"], state["console"]
    assert all(url.startswith(("file:", "data:", "blob:")) for url in state["requests"]), state["requests"]
    ids = {c["id"] for c in state["charts"]}
    expected = {"chart-pareto", "chart-time", "chart-memory", "chart-timeline", "chart-devicemap", "chart-measured"}
    if sc.model.is_moe and result.best.plan.dims.ep > 1:
        expected |= {"chart-experts", "chart-a2a"}
    assert expected <= ids
    for chart in state["charts"]:
        assert chart["traces"] > 0 and chart["points"] > 0 and chart["svg"] > 0, chart
    assert state["rows"] > 10
    assert (tmp_path / "report.png").stat().st_size > 20_000


@pytest.mark.browser
def test_plan_table_sorts_and_filters(browser: Any, written: tuple[Path, Any, Scenario], tmp_path: Path) -> None:
    out, _, _ = written
    open_report(browser, out / "report.html", tmp_path / "table.png")
    col = PLAN_COLUMNS_SHOWN.index("peak_memory_gib")
    browser.find_element("css selector", f'#plans th[data-col="{col}"]').click()
    values = browser.execute_script(
        f"return Array.from(document.querySelectorAll('#plans tbody tr')).map(r => r.cells[{col}].textContent)")
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers)
    browser.find_element("id", "plan-filter").send_keys("zero3")
    visible = browser.execute_script(
        "return Array.from(document.querySelectorAll('#plans tbody tr')).filter(r => r.style.display !== 'none')"
        ".map(r => r.textContent)")
    assert visible and all("zero3" in v for v in visible)
    assert len(visible) < len(values)


PLAN_COLUMNS_SHOWN = ["candidate", "rank", "status", "plan", "step_time_s", "tokens_per_s_per_gpu", "mfu",
                      "peak_memory_gib", "bubble_fraction", "reason"]
