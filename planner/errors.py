"""The one user-error type, its one-line rendering, and the readers that raise it.

Every failure a user can fix (a bad file, field or flag) is a `UserError` carrying the file, the
field and the fix; the CLI prints it as one line and exits 2 (torchtitan's rule: ValueError for
the user, assert for the programmer). Files are read only through `read_text` / `read_json` /
`load_model` here, so a missing file, a directory, a permission problem, a UTF-8 BOM, bad
encoding or bad JSON is named the same way for scenarios, plans, profiles, traces and reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

_BOM = "\ufeff"
M = TypeVar("M", bound=BaseModel)


class UserError(ValueError):
    """A user-facing, one-line problem: `file: field: message; fix` (each part optional)."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.message, self.file, self.field, self.fix = message, file, field, fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [str(p) for p in (self.file, self.field) if p not in (None, "")]
        text = ": ".join([*parts, self.message]) if self.message else ": ".join(parts)
        return f"{text}; {self.fix}" if self.fix else text


class ScenarioError(UserError):
    """A problem with a scenario file."""


def one_line(err: ValidationError) -> str:
    """The first pydantic error as `section.field: message`, which names the field to fix."""
    # An unknown (misspelt) key also shows up as a missing required one; name the typo first,
    # whatever order this pydantic version reports them in.
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "[key]")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif first["type"] == "missing":
        msg = "required field is missing; add it"
    elif first["type"] == "finite_number":
        msg = "must be a finite number (not inf or nan)"
    elif first["type"] in ("json_invalid", "json_type"):
        msg = f"not valid JSON ({first.get('ctx', {}).get('error', msg)})"
    else:
        msg = msg.removeprefix("Value error, ")
    msg = " ".join(msg.split())  # pydantic messages can span lines
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{extra}" if loc else f"{msg}{extra}"


def read_text(path: str | Path, *, what: str, flag: str | None = None) -> str:
    """A text file's contents (UTF-8, a leading BOM stripped); UserError naming it otherwise.

    `what` says what the file is ("plan", "profile", ...), `flag` the option that named it.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"is a directory, not a {what} file", file=path, field=flag, fix=f"pass the {what} file itself")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} file not found", file=path, field=flag, fix=f"pass an existing {what} file") from None
    except OSError as err:
        raise UserError(f"cannot read it ({err.strerror or err})", file=path, field=flag,
                        fix="check the path and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", file=path, field=flag,
                        fix=f"save the {what} as UTF-8") from None
    return text.removeprefix(_BOM)


def read_json(path: str | Path, *, what: str, flag: str | None = None) -> Any:
    """Parsed JSON of a file; UserError with the file, line and column when it is not JSON."""
    text = read_text(path, what=what, flag=flag)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})", file=path,
                        field=flag, fix=f"fix the {what} file or write it again") from None
    except RecursionError:
        raise UserError("JSON nested too deeply", file=path, fix=f"fix the {what} file") from None


def expect_object(raw: Any, *, file: str | Path, what: str) -> dict[str, Any]:
    """The top level of a JSON/TOML file must be an object (a JSON array, number or string is not)."""
    if not isinstance(raw, dict):
        raise UserError(f"the top level is a JSON {_json_kind(raw)}, not an object", file=file,
                        fix=f"a {what} file holds one {{...}} object")
    return raw


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def validated(model: type[M], raw: Any, *, file: str | Path, what: str) -> M:
    """model.model_validate(raw) with the file named and pydantic's error as one line."""
    try:
        return model.model_validate(expect_object(raw, file=file, what=what))
    except ValidationError as err:
        raise UserError(one_line(err), file=file, fix=None) from None


def load_model(model: type[M], path: str | Path, *, what: str, flag: str | None = None) -> M:
    """Read, parse and validate a JSON file into `model`; every failure is one UserError line."""
    return validated(model, read_json(path, what=what, flag=flag), file=path, what=what)
