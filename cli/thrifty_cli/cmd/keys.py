"""`thrifty` subcommands for the keys component."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this component's commands (none yet)."""
    del app
