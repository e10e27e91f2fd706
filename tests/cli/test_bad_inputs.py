"""Issue 14's classes of bad input, one fixture each, run against the CLI.

Each case writes its files into a fresh directory, runs one verb there and asserts the contract
(cli_contract.assert_user_error): exit 2, one line naming the file/field/flag and the fix, no
traceback, and the directory byte-for-byte (and mode-for-mode) unchanged.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import planner.cli.search
from cli_contract import assert_user_error, invoke, snapshot
from conftest import FIXTURES, REPO

TINY = """
[model]
preset = "tiny-dense"
[cluster]
preset = "cpu-local"
[job]
seq_len = 256
global_batch = 8
precision = "fp32"
"""
INLINE_GPU = """
[model]
preset = "tiny-dense"
[cluster]
num_nodes = 1
gpus_per_node = 4
gpu = {{ name = "g", peak_tflops = {{ bf16 = {peak} }}, memory_gib = {mem}, memory_bandwidth_gbs = 100 }}
[cluster.network]
intra_node_gbs = {bw}
inter_node_gbs = 10
[job]
seq_len = 256
global_batch = 8
"""
PROFILE = json.loads((REPO / "profiles" / "cpu-2core.json").read_text())
HF_LLAMA = json.loads((FIXTURES / "hf" / "llama3-8b.json").read_text())
HF_MIXTRAL = json.loads((FIXTURES / "hf" / "mixtral-8x7b.json").read_text())
HF_QWEN_MOE = json.loads((FIXTURES / "hf" / "qwen2-57b-a14b.json").read_text())
GPT2 = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256}


def _scenario(d: Path, text: str = TINY, name: str = "s.toml") -> Path:
    (d / name).write_text(text)
    return d / name


def _with(text: str, section: str, lines: str) -> str:
    """Append lines to a [section] (appending a new section when absent)."""
    header = f"[{section}]"
    return text.replace(header, f"{header}\n{lines}", 1) if header in text else f"{text}\n{header}\n{lines}\n"


def _hf(d: Path, raw, *, name: str = "config.json", bom: bool = False) -> list:
    body = raw if isinstance(raw, str) else json.dumps(raw)
    (d / name).write_text(("\ufeff" if bom else "") + body)
    return ["check", _scenario(d, TINY.replace('preset = "tiny-dense"', f'hf_config = "{name}"'))]


def _profile(d: Path, mutate: Callable[[dict], object]) -> list:
    data = json.loads(json.dumps(PROFILE))
    data = mutate(data) or data
    (d / "p.json").write_text(json.dumps(data))
    return ["estimate", _scenario(d), "--profile", d / "p.json", "--tp", "2"]


def _drop(data: dict, *path: str) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


def _set(data: dict, value, *path: str) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _plan_file(d: Path, text: str, name: str = "plan.json") -> Path:
    (d / name).write_text(text)
    return d / name


def _result_dir(d: Path, mutate: Callable[[dict], object]) -> list:
    """A real search output directory whose result.json is then damaged."""
    out = d / "r"
    res = invoke(["search", _scenario(d), "--out", out])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "result.json").read_text())
    data = mutate(data) or data
    (out / "result.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return ["report", out]


# case id -> (setup(tmp) -> argv, a piece of the expected line)
CASES: dict[str, tuple[Callable[[Path], list], str]] = {
    # 1. tracebacks where input reached code before/after the schema
    "model-is-int": (lambda d: ["check", _scenario(d, TINY.replace('[model]\npreset = "tiny-dense"', "model = 5"))],
                     "model: must be a table"),
    "model-preset-list": (lambda d: ["check", _scenario(d, TINY.replace('preset = "tiny-dense"', 'preset = ["tiny-dense"]'))],
                          "model.preset"),
    "cluster-preset-list": (lambda d: ["check", _scenario(d, TINY.replace('preset = "cpu-local"', 'preset = ["cpu-local"]'))],
                            "cluster.preset"),
    "cluster-gpu-list": (lambda d: ["check", _scenario(d, _with(TINY, "cluster", 'gpu = ["h100"]'))], "gpu"),
    "hf-config-int": (lambda d: ["check", _scenario(d, TINY.replace('preset = "tiny-dense"', "hf_config = 5"))],
                      "model.hf_config"),
    "hf-json-array": (lambda d: _hf(d, [1, 2, 3]), "top level is a JSON array"),
    "hf-gpt2-no-n_embd": (lambda d: _hf(d, {k: v for k, v in GPT2.items() if k != "n_embd"}), "'n_embd'"),
    "hf-mixtral-no-intermediate": (lambda d: _hf(d, {k: v for k, v in HF_MIXTRAL.items() if k != "intermediate_size"}),
                                   "'intermediate_size'"),
    "hf-qwen-moe-no-moe-intermediate": (
        lambda d: _hf(d, {k: v for k, v in HF_QWEN_MOE.items() if k != "moe_intermediate_size"}), "moe_intermediate_size"),
    "hf-string-layers": (lambda d: _hf(d, HF_LLAMA | {"num_hidden_layers": "many"}), "num_hidden_layers"),
    "hf-not-json": (lambda d: _hf(d, "{not json"), "not valid JSON"),
    "hf-not-utf8": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{}") and
                    ["check", _scenario(d, TINY.replace('preset = "tiny-dense"', 'hf_config = "config.json"'))],
                    "not UTF-8"),
    "hf-is-directory": (lambda d: (d / "cfg").mkdir() or
                        ["check", _scenario(d, TINY.replace('preset = "tiny-dense"', 'hf_config = "cfg"'))],
                        "is a directory"),
    "mbs-empty": (lambda d: ["search", _scenario(d, _with(TINY, "search", "micro_batch_sizes = []"))],
                  "search.micro_batch_sizes"),
    "schedules-empty": (lambda d: ["search", _scenario(d, _with(TINY, "search", "schedules = []"))], "search.schedules"),
    "zero-stages-empty": (lambda d: ["search", _scenario(d, _with(TINY, "search", "zero_stages = []"))],
                          "search.zero_stages"),
    "tp-zero": (lambda d: ["estimate", _scenario(d), "--tp", "0"], "--tp: must be >= 1"),
    "tp-negative": (lambda d: ["estimate", _scenario(d), "--tp", "-8"], "--tp: must be >= 1"),
    "pp-zero": (lambda d: ["estimate", _scenario(d), "--pp", "0"], "--pp"),
    "dp-negative": (lambda d: ["estimate", _scenario(d), "--dp", "-1"], "--dp"),
    "mbs-zero-flag": (lambda d: ["estimate", _scenario(d), "--mbs", "0"], "--mbs"),
    "profile-peak-zero": (lambda d: _profile(d, lambda p: _set(p, 0, "peak_tflops", "bf16")), "peak_tflops.bf16"),
    "profile-peak-inf": (lambda d: _profile(d, lambda p: _set(p, float("inf"), "peak_tflops", "bf16")), "finite"),
    "profile-peak-1e300": (lambda d: _profile(d, lambda p: _set(p, 1e300, "peak_tflops", "bf16")), "peak_tflops.bf16"),
    "profile-peak-nan": (lambda d: _profile(d, lambda p: _set(p, float("nan"), "peak_tflops", "fp32")), "peak_tflops"),
    "profile-no-bf16-curve": (lambda d: _profile(d, lambda p: _drop(p, "matmul_efficiency", "bf16")),
                              "matmul_efficiency: needs a bf16 entry"),
    "profile-bandwidth-inf": (lambda d: _profile(d, lambda p: _set(p, float("inf"), "memory_bandwidth_gbs")),
                              "memory_bandwidth_gbs"),
    "profile-array": (lambda d: _profile(d, lambda p: [p]), "top level is a JSON array"),
    "profile-bad-json": (lambda d: (d / "p.json").write_text("{") and
                         ["estimate", _scenario(d), "--profile", d / "p.json"], "p.json: --profile: not valid JSON"),
    "profile-missing": (lambda d: ["estimate", _scenario(d), "--profile", d / "none.json"], "profile file not found"),
    "graph-model-math-pi": (lambda d: ["graph", "--model", "math:pi"], "--model: 'math:pi' is a float"),
    "graph-model-returns-str": (lambda d: ["graph", "--model", "os:getcwd"], "--model"),
    "graph-model-unknown": (lambda d: ["graph", "--model", "no-such-model"], "--model: unknown model"),
    "graph-model-empty-module": (lambda d: ["graph", "--model", ":x"], "--model"),
    "graph-seq-len-zero": (lambda d: ["graph", "--model", "tiny-dense", "--seq-len", "0"], "--seq-len"),
    "result-missing-key": (lambda d: _result_dir(d, lambda r: _drop(r, "detailed")), "missing key 'detailed'"),
    "result-detailed-garbage": (lambda d: _result_dir(d, lambda r: _set(r, {str(r["best"]): 5}, "detailed")), "result"),
    "result-array": (lambda d: _result_dir(d, lambda r: [r]), "top level is a JSON array"),
    "result-not-json": (lambda d: _result_dir(d, lambda r: "{oops"), "not valid JSON"),
    "report-dir-is-file": (lambda d: _plan_file(d, "x", "r") and ["report", d / "r"], "is a file"),
    "trace-is-directory": (lambda d: (d / "t").mkdir() or ["estimate", _scenario(d), "--trace", d / "t"],
                           "--trace: is a directory"),
    "trace-under-a-file": (lambda d: _plan_file(d, "x", "f") and ["estimate", _scenario(d), "--trace", d / "f" / "t.json"],
                           "--trace"),
    "profile-out-is-directory": (lambda d: (d / "o.json").mkdir() or ["profile", "--out", d / "o.json", "--nproc", "1"],
                                 "--out"),
    "profile-out-under-a-file": (lambda d: _plan_file(d, "x", "f") and ["profile", "--out", d / "f" / "p.json"], "--out"),
    "search-out-is-file": (lambda d: _plan_file(d, "keep me", "out") and ["search", _scenario(d), "--out", d / "out"],
                           "--out: exists and is not a directory"),
    "search-out-under-a-file": (lambda d: _plan_file(d, "keep me", "f") and
                                ["search", _scenario(d), "--out", d / "f" / "sub"], "--out"),
    # 2. one line, now with the file, field and fix
    "plan-not-json": (lambda d: ["estimate", _scenario(d), "--plan", _plan_file(d, "{nope")], "plan.json: --plan: not valid JSON"),
    "plan-array": (lambda d: ["estimate", _scenario(d), "--plan", _plan_file(d, "[]")], "plan.json"),
    "plan-unknown-field": (lambda d: ["estimate", _scenario(d), "--plan", _plan_file(d, '{"dimz": {}}')],
                           "plan.json: dimz: unknown field"),
    "plan-wrong-world": (lambda d: ["estimate", _scenario(d), "--plan", _plan_file(d, '{"dims": {"dp": 8}}')], "dims"),
    "plan-missing": (lambda d: ["estimate", _scenario(d), "--plan", d / "none.json"], "plan file not found"),
    "plan-bad-utf8": (lambda d: (d / "plan.json").write_bytes(b'{"dims": "\xff"}') and
                      ["estimate", _scenario(d), "--plan", d / "plan.json"], "not UTF-8"),
    "routing-missing": (lambda d: ["search", _scenario(d, TINY.replace("tiny-dense", "tiny-moe")), "--routing", d / "r.json"],
                        "routing trace file not found"),
    "routing-array": (lambda d: _plan_file(d, "[]", "r.json") and
                      ["search", _scenario(d, TINY.replace("tiny-dense", "tiny-moe")), "--routing", d / "r.json"],
                      "r.json"),
    "routing-bad-shape": (lambda d: _plan_file(d, '{"num_experts": 4, "layers": [{"layer": 0, "expert_tokens": [1]}]}',
                                               "r.json") and
                          ["search", _scenario(d, TINY.replace("tiny-dense", "tiny-moe")), "--routing", d / "r.json"],
                          "expert_tokens"),
    "routing-no-key": (lambda d: _plan_file(d, '{"num_experts": 4, "layers": [{"layer": 0}]}', "r.json") and
                       ["search", _scenario(d, TINY.replace("tiny-dense", "tiny-moe")), "--routing", d / "r.json"],
                       "missing key 'expert_tokens'"),
    "toml-bad-utf8": (lambda d: (d / "s.toml").write_bytes(b"\xff[model]") and ["check", d / "s.toml"], "not UTF-8"),
    "scenario-is-directory": (lambda d: (d / "s.toml").mkdir() or ["check", d / "s.toml"], "is a directory"),
    "cp-does-not-divide-seq": (lambda d: ["search", _scenario(d, _with(TINY.replace("seq_len = 256", "seq_len = 255"),
                                                                       "search", "fixed = { cp = 2 }"))],
                               "seq_len=255 must be divisible by 2*cp = 4"),
    "model-too-big-even-sharded": (lambda d: ["search", _scenario(d, TINY.replace('preset = "tiny-dense"',
                                                                                  'preset = "llama3.1-405b"'))],
                                   "even fully sharded"),
    "usage-unknown-verb": (lambda d: ["frobnicate"], "No such command"),
    "usage-unknown-flag": (lambda d: ["estimate", _scenario(d), "--tpp", "2"], "No such option: --tpp"),
    "usage-bad-int": (lambda d: ["estimate", _scenario(d), "--tp", "two"], "--tp"),
    "usage-missing-arg": (lambda d: ["estimate"], "Missing argument"),
    "usage-bad-top": (lambda d: ["search", "--top", "0"], "--top"),
    # 3. impossible input, now refused
    "gpu-peak-negative": (lambda d: ["check", _scenario(d, INLINE_GPU.format(peak=-1, mem=8, bw=10))], "peak_tflops.bf16"),
    "gpu-peak-zero": (lambda d: ["check", _scenario(d, INLINE_GPU.format(peak=0, mem=8, bw=10))], "peak_tflops.bf16"),
    "gpu-peak-nan": (lambda d: ["check", _scenario(d, INLINE_GPU.format(peak="nan", mem=8, bw=10))], "peak_tflops.bf16"),
    "gpu-memory-inf": (lambda d: ["check", _scenario(d, INLINE_GPU.format(peak=1, mem="inf", bw=10))], "memory_gib"),
    "bandwidth-inf": (lambda d: ["check", _scenario(d, INLINE_GPU.format(peak=1, mem=8, bw="inf"))], "intra_node_gbs"),
    "mbs-zero-negative": (lambda d: ["check", _scenario(d, _with(TINY, "search", "micro_batch_sizes = [0, -2]"))],
                          "search.micro_batch_sizes.0"),
    "pair-override-negative": (lambda d: ["check", _scenario(d, """
[model]
preset = "tiny-dense"
[cluster]
preset = "dgx-h100"
num_nodes = 2
[cluster.network]
pair_overrides = [{ nodes = [-1, 1], inter_node_gbs = 5 }]
[job]
seq_len = 256
global_batch = 8
""")], "pair_overrides"),
    "nvlink-domain-not-dividing": (lambda d: ["check", _scenario(d, """
[model]
preset = "tiny-dense"
[cluster]
preset = "dgx-h100"
num_nodes = 3
[cluster.network]
nvlink_domain = 16
[job]
seq_len = 256
global_batch = 8
""")], "nvlink_domain"),
    "nvlink-domain-not-tiling-node": (lambda d: ["check", _scenario(d, _with(TINY.replace('preset = "cpu-local"', 'preset = "dgx-h100"'),
                                                                             "cluster.network", "nvlink_domain = 3"))],
                                      "nvlink_domain"),
    "billion-nodes": (lambda d: ["search", _scenario(d, _with(TINY.replace('preset = "cpu-local"', 'preset = "dgx-h100"'),
                                                              "cluster", "num_nodes = 1000000000"))], "num_nodes"),
    "seq-len-absurd": (lambda d: ["check", _scenario(d, TINY.replace("seq_len = 256", "seq_len = 100000000000"))],
                       "job.seq_len"),
    "memory-fraction-zero": (lambda d: ["check", _scenario(d, _with(TINY, "search", "memory_fraction = 0"))],
                             "memory_fraction"),
    # 4. names that would escape reports/
    "name-dotdot": (lambda d: ["search", _scenario(d, 'name = "../.."\n' + TINY)], "name"),
    "name-absolute": (lambda d: ["search", _scenario(d, f'name = "{d}/abs"\n' + TINY)], "name"),
    "name-empty": (lambda d: ["search", _scenario(d, 'name = ""\n' + TINY)], "name"),
    "name-dot": (lambda d: ["search", _scenario(d, 'name = "."\n' + TINY)], "name"),
    # 5. planner run refuses before anything starts
    "run-nproc-zero": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d), "--nproc", "0"],
                       "--nproc"),
    "run-resume-missing": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d),
                                      "--resume-from", d / "no-ckpt"], "--resume-from"),
    "run-70b-on-cpu": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}')], "memory"),
    "run-world-mismatch": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d),
                                      "--nproc", "2"], "nproc"),
    "run-plan-from-other-scenario": (lambda d: _other_scenario_plan(d), "scenario"),
    "run-out-is-file": (lambda d: _plan_file(d, "x", "o") and
                        ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d), "--out", d / "o"], "--out"),
    "routing-wrong-experts": (lambda d: _plan_file(d, '{"num_experts": 8, "layers": [{"layer": 0, "expert_tokens": '
                                                      '[1, 1, 1, 1, 1, 1, 1, 1]}]}', "r.json") and
                              ["search", _scenario(d, TINY.replace("tiny-dense", "tiny-moe")), "--routing", d / "r.json"],
                              "--routing: the trace has 1 MoE layers x 8 experts"),
    "routing-for-dense-model": (lambda d: _plan_file(d, '{"num_experts": 4, "layers": [{"layer": 0, "expert_tokens": '
                                                        '[1, 1, 1, 1]}]}', "r.json") and
                                ["search", _scenario(d), "--routing", d / "r.json"], "has no experts"),
    "graph-model-calls-exit": (lambda d: ["graph", "--model", "sys:exit"], "--model: sys:exit() raised SystemExit"),
    "run-data-is-directory": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d),
                                         "--data", d], "is not a file"),
    "run-data-missing": (lambda d: ["run", _plan_file(d, '{"dims": {"dp": 4}}'), "--scenario", _scenario(d),
                                    "--data", d / "none.txt"], "data"),
}


def _other_scenario_plan(d: Path) -> list:
    """A plan searched for one scenario, run with another: result.json next to it says which."""
    out = d / "r"
    assert invoke(["search", _scenario(d), "--out", out]).exit_code == 0
    other = _scenario(d, TINY.replace("tiny-dense", "tiny-gpt"), name="other.toml")
    return ["run", out / "plan.json", "--scenario", other]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    setup, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs (reports/<name>) would land here
    args = setup(work)
    before = snapshot(tmp_path)
    line = assert_user_error(invoke(args), contains=expected)
    assert snapshot(tmp_path) == before, f"{case} changed files ({line})"


def test_read_only_output_place_is_refused_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount (not only a chmod, which root ignores): the probe write fails first,
    before the profiler measures or the search searches."""
    import planner.profiler.run

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the output path should have been refused before this work")

    monkeypatch.setattr(planner.profiler.run, "profile_machine", must_not_run)
    monkeypatch.setattr(planner.cli.search, "search", must_not_run)
    monkeypatch.chdir(tmp_path)
    scenario = _scenario(tmp_path)
    for args in (["search", scenario, "--out", "/proc/planner-out"],
                 ["estimate", scenario, "--trace", "/proc/planner-trace.json"],
                 ["profile", "--out", "/proc/planner-profile.json", "--nproc", "1"]):
        assert_user_error(invoke(args), contains="cannot write")
    if os.geteuid() != 0:  # chmod only binds non-root users
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        assert_user_error(invoke(["search", scenario, "--out", locked / "out"]), contains="cannot write")


def test_bom_files_are_read_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A UTF-8 BOM (Notepad) is stripped from scenarios, HF configs and plans."""
    monkeypatch.chdir(tmp_path)
    scenario = tmp_path / "bom.toml"
    scenario.write_text("\ufeff" + TINY, encoding="utf-8")
    assert invoke(["check", scenario]).exit_code == 0
    assert invoke(_hf(tmp_path, HF_LLAMA | {"num_hidden_layers": 2}, bom=True)).exit_code == 0
    plan = _plan_file(tmp_path, '\ufeff{"dims": {"dp": 4}}')
    res = invoke(["estimate", scenario, "--plan", plan, "--json"])
    assert res.exit_code == 0, res.output


def test_estimate_and_search_agree_on_memory_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that fits the whole memory but not memory_fraction of it: estimate says 'no' too."""
    monkeypatch.chdir(tmp_path)
    full = json.loads(invoke(["estimate", _scenario(tmp_path), "--json"]).stdout)
    assert full["fits"]
    used = full["peak_memory_gib"] / (full["memory_capacity_bytes"] / 2**30)
    only_this_plan = (f"memory_fraction = {used / 2:.6f}\nfixed = {{ dp = 4 }}\nzero_stages = [0]\n"
                      'recompute = ["none"]\nmicro_batch_sizes = [1]\nsequence_parallel = [false]\n'
                      "offload = []")  # no offload pass: the search may price only this plan
    tight = _scenario(tmp_path, _with(TINY, "search", only_this_plan), name="tight.toml")
    est = json.loads(invoke(["estimate", tight, "--json"]).stdout)
    assert not est["fits"] and est["memory_capacity_bytes"] < full["memory_capacity_bytes"]
    res = invoke(["search", tight, "--out", tmp_path / "r", "--top", "1"])
    assert res.exit_code == 2 and "nothing fits" in res.stderr  # the same plan, the same rule
