"""The CLI's plumbing: the typer app with its one-line error boundary, the console, the
user-error context, and the embedded default scenario. The verbs live in main.py."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperGroup

from planner.scenario import Scenario, load_scenario, one_line, scenario_from_dict

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1


class OneLineGroup(TyperGroup):
    """The CLI's outer boundary: usage errors (bad flag, unknown verb) as one line, exit 2;
    SIGTERM unwinds like Ctrl-C so every temp file is removed; a bug is one line too (exit 1,
    PLANNER_DEBUG=1 re-raises it with the traceback)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        previous = _terminate_as_exit()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:  # bare `planner` or `planner VERB`: the help, not an error
            typer.echo(err.ctx.get_help() if err.ctx is not None else err.format_message())
            code = 0
        except UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else (prog_name or "planner")
            message = " ".join(err.format_message().split()).rstrip(".")
            code = _print_error(f"{message}; see `{where} --help`", EXIT_USER_ERROR)
        except ClickException as err:
            code = _print_error(" ".join(err.format_message().split()), err.exit_code)
        except typer.Abort:
            code = 130
        except Exception as err:  # the last resort: no traceback on any input
            if os.environ.get("PLANNER_DEBUG"):
                raise
            code = _print_error(f"internal error ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                                "this is a bug, rerun with PLANNER_DEBUG=1 for the traceback", EXIT_INTERNAL)
        finally:
            signal.signal(signal.SIGTERM, previous)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _print_error(message: str, code: int) -> int:
    typer.echo(f"error: {message}", err=True)
    return code


def _terminate_as_exit():
    """SIGTERM raises SystemExit(143) instead of killing outright, so finally blocks and atexit
    hooks (temp dirs, child process groups) run as they do for Ctrl-C."""

    def _raise(signum, _frame):  # noqa: ANN001
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (e.g. a test runner thread): leave signals alone
        return signal.getsignal(signal.SIGTERM)


app = typer.Typer(
    cls=OneLineGroup,
    help="Plan, predict and run parallel training layouts for dense and MoE LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)

@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user mistakes into one line on stderr and exit code 2; no traceback, nothing written."""
    try:
        yield
    except ValidationError as err:
        fail(one_line(err))
    except ValueError as err:  # UserError, and the validators' one-line ValueErrors
        fail(" ".join(str(err).split()) or type(err).__name__)
    except OSError as err:  # a path the user gave: missing, a directory, read-only, disk full
        where = f"{err.filename}: " if err.filename else ""
        fail(f"{where}{err.strerror or err}; check the path and its permissions")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def default_scenario() -> Scenario:
    """The scenario embedded in the package, run by `planner search` with no argument."""
    import tomllib

    text = resources.files("planner.scenario").joinpath("data/default.toml").read_text()
    return scenario_from_dict(tomllib.loads(text), base_dir=Path.cwd(), name="default", source="default.toml")


def scenario_or_default(path: Path | None) -> Scenario:
    return default_scenario() if path is None else load_scenario(path)


def main() -> None:
    """The process entry (the `planner` console script, `python -m planner`); tests drive `app`.

    A run is one short process whose imports, scenario and graph live until it exits, so the
    cyclic collector's full passes over them are pure cost: gc.freeze() moves what is alive after
    the imports out of its sight, and again at exit, where the interpreter's shutdown would
    otherwise collect every object of the run once more (0.1-0.4 s of a 1.4 s warm search,
    measured). Refcounting still frees everything acyclic, and this never runs in a test process.
    """
    gc.freeze()
    try:
        app(prog_name="planner")
    finally:
        gc.freeze()
