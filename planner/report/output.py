"""Safe outputs: the one atomic-write helper, output paths checked before work, temp files always removed.

Rules (issue 14): write only inside the output directory the user gave (or that we created), never
replace something that is not a directory, keep whatever else lives there (dotfiles included),
and leave no temp file behind on any exit path. Temp entries are named `.planner-tmp-<pid>-*`
so a later run removes those a killed process (SIGKILL) could not; files get the usual
umask-derived modes (mkstemp's 0600 made shared reports unreadable).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from planner.errors import UserError

T = TypeVar("T")
_PREFIX = ".planner-tmp-"
_LIVE: set[Path] = set()  # temp entries of this process; removed at exit if still there


def _cleanup_live() -> None:
    for path in list(_LIVE):
        _remove(path)


atexit.register(_cleanup_live)


def _remove(path: Path) -> None:
    _LIVE.discard(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temp_name(directory: Path, suffix: str = "") -> Path:
    return directory / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def remove_stale_temps(directory: Path) -> None:
    """Delete temp entries left by processes that no longer exist (killed with SIGKILL)."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_PREFIX):
            continue
        pid = entry.name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(entry)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(path: Path, *, flag: str) -> Path:
    """Refuse, before any long work, an output directory that cannot be written.

    A path that exists but is not a directory is never replaced; a parent that is a file, or a
    directory we may not write, is named with the flag that chose it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("exists and is not a directory (it would be replaced)", file=path, field=flag,
                        fix="pass a directory, or move that file away")
    base = _first_existing(path)
    if not base.is_dir():
        raise UserError(f"{base} is a file, so no directory can be made under it", file=path, field=flag,
                        fix="pick a path under a directory")
    _probe_writable(base, path=path, flag=flag)
    return path


def check_output_file(path: Path, *, flag: str, suffix: str | None = None) -> Path:
    """Refuse an output file path that is a directory, sits under a file or in a read-only place."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise UserError(f"should end in {suffix}", file=path, field=flag, fix=f"name it NAME{suffix}")
    if path.is_dir():
        raise UserError("is a directory", file=path, field=flag, fix="pass a file path inside it")
    if path.name in ("", ".", ".."):
        raise UserError("is not a file name", file=path, field=flag, fix="pass a file path")
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise UserError(f"{base} is a file, so nothing can be written under it", file=path, field=flag,
                        fix="pick a path under a directory")
    _probe_writable(base, path=path, flag=flag)
    return path


def _probe_writable(base: Path, *, path: Path, flag: str) -> None:
    """Create and delete one temp file in `base` (os.access lies for root and read-only mounts)."""
    probe = _temp_name(base, ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as err:
        raise UserError(f"cannot write in {base} ({err.strerror or err})", file=path, field=flag,
                        fix="pick a writable location") from None
    probe.unlink(missing_ok=True)


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p that returns the directories it created (outermost first), to undo on failure."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    for p in missing:
        p.mkdir(mode=0o777)  # the umask applies
    return missing


def _undo_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def write_file(path: Path, data: str | bytes, *, validate: Callable[[Path], T] | None = None) -> T | None:
    """Atomically replace `path` with `data` (temp file in the same directory, fsync, rename).

    `validate(temp_path)` runs before the rename (e.g. load a profile back) and its result is
    returned; a failure leaves the old file untouched and no temp file behind.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError("is a directory", file=path, fix="pass a file path")
    created = _make_dirs(path.parent)
    remove_stale_temps(path.parent)
    tmp = _temp_name(path.parent, path.suffix)
    _LIVE.add(tmp)
    try:
        payload = data.encode() if isinstance(data, str) else data
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        checked = validate(tmp) if validate is not None else None
        os.replace(tmp, path)
        _LIVE.discard(tmp)
        return checked
    except BaseException:
        _remove(tmp)
        _undo_dirs(created)
        raise


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a hidden temp directory inside out_dir; on success move its files into out_dir.

    The moves are renames inside one directory, done with SIGINT/SIGTERM held back, so an
    interrupt leaves either the old outputs or the new ones. Other entries of out_dir are left
    alone. On failure the temp directory, and out_dir itself if this call created it, are removed.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("exists and is not a directory", file=out_dir, fix="pass a directory, or move that file away")
    created = _make_dirs(out_dir)
    remove_stale_temps(out_dir)
    tmp = _temp_name(out_dir)
    _LIVE.add(tmp)
    try:
        tmp.mkdir(mode=0o777)
        yield tmp
        _commit(tmp, out_dir)
    except BaseException:
        _remove(tmp)
        _undo_dirs(created)
        raise
    _remove(tmp)


def _commit(tmp: Path, out_dir: Path) -> None:
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        entries = sorted(tmp.iterdir())
        for entry in entries:  # check every target first: all files move, or none
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                raise UserError("is a directory where an output file goes", file=target,
                                fix="move it away and run again")
        for entry in entries:
            os.replace(entry, out_dir / entry.name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
