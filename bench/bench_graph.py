"""Graph extraction time on this machine (targets, 2 cores: 80-layer 70B < 10 s, 405B < 20 s).

Run: python bench/bench_graph.py [--repeats 3]. Each model is extracted in a fresh state
(model built on meta, one block per kind traced, replicated) and the median wall time printed,
with the whole-model trace of Llama-3-70B (every block traced) for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from planner.graph import extract_graph, trace_module
from planner.scenario import PRESETS
from planner.graph import Transformer, loss_fn

TARGETS_S = {"llama3-70b": 10.0, "llama3.1-405b": 20.0}
CASES = [("llama3-8b", 8192), ("llama3-70b", 4096), ("llama3.1-405b", 8192), ("gpt3-175b", 2048),
         ("mixtral-8x7b", 4096), ("deepseek-v3", 4096)]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _whole_70b() -> float:
    spec = PRESETS["llama3-70b"]
    with torch.device("meta"):
        model = Transformer(spec).to(torch.bfloat16)
    labels = torch.zeros(1, 4096, dtype=torch.long, device="meta")
    seconds, _ = _timed(lambda: trace_module(model, (torch.zeros(1, 4096, dtype=torch.long),), name="whole",
                                             loss=lambda logits: loss_fn(logits, labels)))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    extract_graph(PRESETS["tiny-dense"], seq_len=16)  # warm-up: imports, dispatcher caches
    print(f"{'model':16s} {'seq':>6s} {'layers':>6s} {'ops':>7s} {'median s':>9s} {'target s':>9s}")
    for name, seq in CASES:
        runs = [_timed(lambda name=name, seq=seq: extract_graph(PRESETS[name], seq_len=seq)) for _ in range(repeats)]
        median = statistics.median(s for s, _ in runs)
        graph = runs[0][1]
        target = TARGETS_S.get(name)
        verdict = "" if target is None else ("  ok" if median < target else "  SLOW")
        print(f"{name:16s} {seq:6d} {len(graph.blocks):6d} {graph.dag.number_of_nodes():7d} {median:9.2f} "
              f"{target if target else '-':>9}{verdict}")
    print(f"{'llama3-70b whole trace (every block, no replication)':52s} {_whole_70b():.2f} s")


if __name__ == "__main__":
    main()
