"""The CLI contract every bad input must meet: exit 2, one line on stderr naming what to fix,
no traceback, and not one file created, changed or removed (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from planner.cli import app

RUNNER = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry under root (dotfiles and directories included) with its bytes and mode."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            out[str(path.relative_to(root))] = (data, st.st_mode)
    return out


def invoke(args: list[str]):
    return RUNNER.invoke(app, [str(a) for a in args])


def assert_user_error(result, *, contains: str | None = None) -> str:
    """exit 2, exactly one stderr line starting 'error: ', no traceback; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    assert "internal error" not in lines[0], lines[0]
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]
