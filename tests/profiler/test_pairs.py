"""`planner profile --links`: every rank pair measured on gloo, written into a profile, read by a scenario."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.profiler import link_table, measure_pairs, pair_cases, pair_sizes
from planner.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]


def test_pair_cases_cover_node_pairs_and_rails() -> None:
    single = pair_cases(world_size=4, local_world_size=4)
    assert [c.nodes for c in single] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    multi = pair_cases(world_size=6, local_world_size=2)  # 3 nodes x 2 rails
    assert len(multi) == 3 * 2 and {c.rail for c in multi} == {0, 1}
    assert next(c for c in multi if c.nodes == (1, 2) and c.rail == 1).ranks == (3, 5)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    samples = measure_pairs(pair_cases(world_size=world, local_world_size=world), sizes=pair_sizes(quick=True),
                            device=torch.device("cpu"))
    if rank == 0:
        Path(out).write_text(link_table(samples, world_size=world, local_world_size=world).model_dump_json())
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


@pytest.mark.slow
@pytest.mark.distributed
def test_measured_link_table_feeds_a_scenario(tmp_path: Path, write_scenario) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "table.json"
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_worker, args=(3, port, str(out)), nprocs=3, join=True)
    table = json.loads(out.read_text())
    assert table["num_nodes"] == 3 and [p["nodes"] for p in table["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    assert all(p["bandwidth_gbs"] > 0 and p["latency_us"] >= 0 for p in table["pairs"])
    profile = json.loads((REPO / "profiles" / "cpu-2core.json").read_text()) | {"links": table}
    (tmp_path / "measured.json").write_text(json.dumps(profile))
    path = write_scenario('[model]\npreset = "tiny-dense"\n[cluster]\npreset = "cpu-local"\nnum_nodes = 3\n'
                          'gpus_per_node = 1\n[cluster.network]\nlinks = "measured.json"\n'
                          '[job]\nseq_len = 128\nglobal_batch = 6\n')
    sc = load_scenario(path)
    assert sc.cluster.network.links is not None and len(sc.cluster.network.links.pairs) == 3
