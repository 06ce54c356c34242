"""Registration of component subcommands.

Each module under `thrifty_cli.cmd` owns one component's commands and exposes
`register(app)`; it imports its component lazily (inside the command function), so an image
with only one extra installed can still run its own subcommand.
"""

from __future__ import annotations

import typer

from .cmd import batch, distill, gateway, keys, operator, report, simulator


def register(app: typer.Typer) -> None:
    """Attach every component's subcommands to the root app."""
    for module in (gateway, simulator, keys, batch, operator, distill, report):
        module.register(app)
