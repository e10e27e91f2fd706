"""Wall time of `planner search` on the embedded default scenario, as a user runs it, against
`python -c "import torch"` on the same machine (issue 13's targets: warm graph cache < import
torch; cold cache < 2x import torch).

warm: the graph cache holds the default model's graph (no torch import, no tracing);
cold: an empty cache directory (torch imported, the model traced, the cache written).
Runs alternate (torch, warm, cold) so machine load hits all three alike; medians are printed,
with the load average, and the CPU seconds (user + sys of the command and its children) beside
the wall time: on a shared machine CPU time is the steadier number. A cold search traces in a
forked child beside its own imports (graph/cache.prefetch_graph) and builds the report's cached
assets meanwhile (report.warm_assets; the cold cache directory has none either), so its wall
time can be below its CPU time when a second core is free.

Bytecode: torch is timed from its installed .pyc files, so the planner package is byte-compiled
first (compileall, into its gitignored __pycache__/) as `pip install` does and as Python does on a
user's first run. Without it, a shell with PYTHONDONTWRITEBYTECODE=1 (set on this project's
machines) recompiles ~80 planner modules from source on every run (~0.1 s of CPU) that no
installed user pays; `--no-compile` measures that case.

    python bench/bench_user_path.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _wall(cmd: list[str], *, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave the planner package's bytecode as it is")
    args = parser.parse_args()
    repeats = args.repeats
    if not args.no_compile:
        compileall.compile_dir(REPO / "planner", quiet=1)
    base = os.environ | {"PYTHONPATH": str(REPO)}
    search = [sys.executable, "-m", "planner", "search"]
    times: dict[str, list[tuple[float, float]]] = {"import torch": [], "search, warm cache": [],
                                                   "search, cold cache": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work, warm_cache = Path(tmp), Path(tmp) / "warm-cache"
        warm = base | {"PLANNER_CACHE_DIR": str(warm_cache)}
        _wall(search, env=warm, cwd=work)  # fill the warm cache (and the report's plotly asset)
        for k in range(repeats):
            times["import torch"].append(_wall([sys.executable, "-c", "import torch"], env=base, cwd=work))
            times["search, warm cache"].append(_wall(search, env=warm, cwd=work))
            cold = base | {"PLANNER_CACHE_DIR": str(work / f"cold-{k}")}
            times["search, cold cache"].append(_wall(search, env=cold, cwd=work))
    wall = {name: statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    torch_s, torch_cpu = wall["import torch"], cpu["import torch"]
    print(f"planner search, default scenario (median of {repeats}; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; planner bytecode "
          f"{'as found' if args.no_compile else 'compiled first'}):")
    for name, t in wall.items():
        spread = f"{min(w for w, _ in times[name]):.2f}-{max(w for w, _ in times[name]):.2f}"
        print(f"  {name:<20} {t:6.2f} s wall ({spread} s)  {t / torch_s:4.2f}x import torch   "
              f"{cpu[name]:5.2f} s CPU  {cpu[name] / torch_cpu:4.2f}x")
    print(f"targets (wall): warm < 1x import torch: {'met' if wall['search, warm cache'] < torch_s else 'NOT met'}; "
          f"cold < 2x: {'met' if wall['search, cold cache'] < 2 * torch_s else 'NOT met'}")


if __name__ == "__main__":
    main()
