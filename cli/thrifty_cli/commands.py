"""Registration of component subcommands (each imports its component only when run)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every component's subcommands to the root app."""
    del app
