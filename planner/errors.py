"""The one user-error type and its one-line rendering.

Every failure a user can fix (a bad file, field or flag) is a `UserError`; the CLI prints it as
one line and exits 2 (torchtitan's rule: ValueError for the user, assert for the programmer).
"""

from __future__ import annotations

from pydantic import ValidationError


class UserError(ValueError):
    """A user-facing, one-line problem: the message names the file, the field and the fix."""


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
    else:
        msg = msg.removeprefix("Value error, ")
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{extra}" if loc else f"{msg}{extra}"
