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

On a miss the CLI starts the trace early, in a forked child (`prefetch_graph`), so importing
torch and tracing (one core) overlap the parent's own imports of the search and the report
(the other core); the parent reads the pickled graph from a pipe when it needs it. Any failure
of the child (or no fork: not Linux, threads running) falls back to tracing in-process.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib
import os
import pickle
import signal
import sys
import tempfile
import threading
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


def _entry(spec: ModelSpec, *, seq_len: int, batch: int) -> Path:
    return cache_dir() / "graphs" / f"{spec.name}-{graph_key(spec, seq_len=seq_len, batch=batch)[:32]}.pickle"


def _extract(spec: ModelSpec, *, seq_len: int, batch: int) -> ModelGraph:
    # the tracer is the only torch importer; loaded here, on a miss only (PEP 562 in graph/__init__)
    return importlib.import_module("planner.graph").extract_graph(spec, seq_len=seq_len, batch=batch)


class GraphPrefetch:
    """A forked child tracing one graph; `take()` returns it with its pickle (None if the child
    failed) and `close()` stops a child nobody waits for (an error or Ctrl-C in the parent)."""

    def __init__(self, pid: int, fd: int, key: tuple[str, int, int]) -> None:
        self.pid, self.fd, self.key = pid, fd, key

    def take(self) -> tuple[ModelGraph, bytes] | None:
        fd, self.fd = self.fd, -1
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
            _, status = os.waitpid(self.pid, 0)
            self.pid = 0
            graph = pickle.loads(data) if os.waitstatus_to_exitcode(status) == 0 else None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
            return None
        finally:
            self.close()
        return (graph, data) if isinstance(graph, ModelGraph) else None

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.pid = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> GraphPrefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch_graph(spec: ModelSpec, *, seq_len: int, batch: int = 1) -> GraphPrefetch | None:
    """Start tracing now in a forked child when the cache has no entry; None when there is
    nothing to do or forking is not safe here (non-Linux, or threads that a fork would orphan)."""
    if sys.platform != "linux" or threading.active_count() > 1 or _read(_entry(spec, seq_len=seq_len, batch=batch)):
        return None
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: trace, pickle into the pipe, and leave without running any parent cleanup
        code = 1
        try:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # die with the parent, even a SIGKILLed one (prctl(2) PR_SET_PDEATHSIG = 1)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                return None
            # a one-shot child that leaves by os._exit: the cyclic collector would rescan torch's
            # and the parent's objects at every full pass (~0.25 s of a 1.5 s trace) and reclaim
            # nothing a trace needs (peak RSS measured equal with and without it)
            gc.disable()
            graph = _extract(spec, seq_len=seq_len, batch=batch)
            with os.fdopen(write_fd, "wb") as f:
                pickle.dump(graph, f, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return GraphPrefetch(pid, read_fd, (spec.model_dump_json(), seq_len, batch))


def cached_graph(spec: ModelSpec, *, seq_len: int, batch: int = 1,
                 prefetch: GraphPrefetch | None = None) -> ModelGraph:
    """extract_graph(spec, seq_len, batch) from the cache, tracing (and storing) on a miss;
    a `prefetch_graph` of the same graph already under way is waited for instead."""
    path = _entry(spec, seq_len=seq_len, batch=batch)
    graph = _read(path)
    if graph is None:
        same = prefetch is not None and prefetch.key == (spec.model_dump_json(), seq_len, batch)
        taken = prefetch.take() if same else None
        if taken is None:
            graph = _extract(spec, seq_len=seq_len, batch=batch)
            taken = graph, pickle.dumps(graph, protocol=pickle.HIGHEST_PROTOCOL)
        graph, data = taken
        _write(path, data)  # the child's own pickle: never pickled twice
    return graph


def _read(path: Path) -> ModelGraph | None:
    try:
        with path.open("rb") as f:
            graph = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    return graph if isinstance(graph, ModelGraph) else None


def _write(path: Path, data: bytes) -> None:
    """Atomic; a cache that cannot be written (read-only home, full disk) is skipped silently."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(data)
        os.replace(f.name, path)
    except OSError:
        return
