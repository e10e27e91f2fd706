"""plans.csv read back as typed columns for the report, with the csv module and numpy.

pandas took ~0.25 s to import, a fifth of a warm `planner search`, for a few filters over one
table. A column is int64 when every cell is an integer, float64 when every non-empty cell is a
number (empty = NaN), else str: pandas.read_csv's inference for the files report/files.py writes,
so the charts get the same arrays (plotly encodes them as the same typed buffers).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BOOL_COLUMNS = ("fits", "pareto", "sequence_parallel")


@dataclass(frozen=True, slots=True)
class Plans:
    """Rows of plans.csv as one array per column, in file order (a subset keeps its order)."""

    columns: dict[str, np.ndarray]
    size: int

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, rows: np.ndarray | Sequence[int]) -> Plans:
        """The rows a boolean mask selects, or the rows at these positions, in that order."""
        rows = np.asarray(rows)
        if rows.dtype != bool:
            rows = rows.astype(np.int64)
        picked = {name: col[rows] for name, col in self.columns.items()}
        return Plans(picked, int(rows.sum()) if rows.dtype == bool else len(rows))

    def head(self, n: int) -> Plans:
        return self.take(np.arange(min(max(n, 0), self.size)))

    def where(self, column: str, *values: str) -> Plans:
        return self.take(np.isin(self.columns[column], list(values)))

    def records(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Rows as dicts of Python scalars (ints, floats with NaN for empty cells, strs)."""
        cols = [self.columns[n].tolist() for n in names]
        return [dict(zip(names, row)) for row in zip(*cols)]


def concat(parts: Sequence[Plans]) -> Plans:
    names = list(parts[0].columns)
    return Plans({n: np.concatenate([p.columns[n] for p in parts]) for n in names}, sum(p.size for p in parts))


def first_of_each(plans: Plans, column: str) -> np.ndarray:
    """Positions of the first row of each distinct value of `column`, in row order."""
    seen: dict[Any, int] = {}
    for i, value in enumerate(plans.columns[column].tolist()):
        seen.setdefault(value, i)
    return np.array(sorted(seen.values()), dtype=np.int64)


def read_plans(path: Path, *, string_columns: Sequence[str]) -> Plans:
    """plans.csv as typed columns; ValueError (with the row) when it is not one table."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError("no header row")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"line {i} has {len(row)} fields, the header {len(header)}")
    cells = list(zip(*body)) if body else [() for _ in header]
    columns = {name: _typed(list(col), as_str=name in string_columns) for name, col in zip(header, cells)}
    for name in BOOL_COLUMNS:
        if name in columns:
            columns[name] = np.array([str(v).lower() == "true" for v in columns[name].tolist()], dtype=bool)
    return Plans(columns, len(body))


def _typed(cells: list[str], *, as_str: bool) -> np.ndarray:
    if as_str or not cells:
        return np.array(cells, dtype=object) if cells else np.array([], dtype=float)
    try:
        if all(c != "" for c in cells):
            return np.array([int(c) for c in cells], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(c) if c != "" else np.nan for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells, dtype=object)
