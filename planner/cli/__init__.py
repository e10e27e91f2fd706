"""The command line (typer): one small module per verb group; the only place that imports everything."""

from planner.cli.main import app, main

__all__ = ["app", "main"]
