"""`thrifty gateway`: the OpenAI-compatible gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach `thrifty gateway`."""
    app.command("gateway")(gateway)


def gateway(
    config: Annotated[
        Path, typer.Option("--config", "-c", exists=True, dir_okay=False, help="Config file.")
    ],
    host: Annotated[str | None, typer.Option(help="Bind address (default: config).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (default: config).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: config).")] = None,
) -> None:
    """Serve the gateway from a rendered config (see examples/local.yaml)."""
    from thrifty_gateway.server import serve

    serve(config, host=host, port=port, workers=workers)
