"""The command line (typer): app.py is the plumbing, verbs.py the verbs (each calls one module
behind it: search.py, estimate.py, validate.py, ...); the only place that imports everything."""

from planner.cli import verbs
from planner.cli.app import app, main

__all__ = ["app", "main", "verbs"]
