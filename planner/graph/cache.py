"""On-disk cache of extracted graphs, so a repeated search never imports torch.

Tracing the canonical Transformer imports torch (~1.4 s on this project's machines) and traces
(1-7 s); the graph it yields depends only on the model spec, the sequence length, the traced
batch and the extractor's own code. The key is a SHA-256 over all of them (the code as the
bytes of this package's tracing modules), so editing the tracer or the model invalidates the
entry. Entries are pickles written atomically (temp file + rename) under

    $PLANNER_CACHE_DIR/graphs              when set (tests point it at a temp dir), else
    $XDG_CACHE_HOME/planner/graphs         (XDG Base Directory spec), else
    ~/.cache/planner/graphs
(the report keeps its compressed plotly.js beside them, under assets/).

A corrupt or unreadable entry is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import tempfile
from pathlib import Path

from planner.graph.types import ModelGraph
from planner.scenario import ModelSpec

CACHE_ENV = "PLANNER_CACHE_DIR"
# the modules whose code shapes an extracted graph (their bytes go into the key)
_TRACER_MODULES = ("build.py", "canonical.py", "trace.py", "transformer.py", "types.py")
_CODE_DIGEST: str | None = None


def cache_dir() -> Path:
    """The planner's cache root (graphs/ and assets/ live under it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "planner"


def _code_digest() -> str:
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        here = Path(__file__).parent
        digest = hashlib.sha256()
        for name in _TRACER_MODULES:
            digest.update((here / name).read_bytes())
        _CODE_DIGEST = digest.hexdigest()
    return _CODE_DIGEST


def graph_key(spec: ModelSpec, *, seq_len: int, batch: int = 1) -> str:
    """Hex digest of everything the extracted graph depends on."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    digest.update(f"|seq_len={seq_len}|batch={batch}|".encode())
    digest.update(_code_digest().encode())
    return digest.hexdigest()


def cached_graph(spec: ModelSpec, *, seq_len: int, batch: int = 1) -> ModelGraph:
    """extract_graph(spec, seq_len, batch) from the cache, tracing (and storing) on a miss."""
    path = cache_dir() / "graphs" / f"{spec.name}-{graph_key(spec, seq_len=seq_len, batch=batch)[:32]}.pickle"
    graph = _read(path)
    if graph is None:
        # the tracer is the only torch importer; loaded here, on a miss only (PEP 562 in graph/__init__)
        extract = importlib.import_module("planner.graph").extract_graph
        graph = extract(spec, seq_len=seq_len, batch=batch)
        _write(path, graph)
    return graph


def _read(path: Path) -> ModelGraph | None:
    try:
        with path.open("rb") as f:
            graph = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    return graph if isinstance(graph, ModelGraph) else None


def _write(path: Path, graph: ModelGraph) -> None:
    """Atomic; a cache that cannot be written (read-only home, full disk) is skipped silently."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as f:
            pickle.dump(graph, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(f.name, path)
    except OSError:
        return
