"""`thrifty batch-worker`: the batch queue's worker (its own Deployment in the cluster)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach `thrifty batch-worker`."""
    app.command("batch-worker")(batch_worker)


def batch_worker(
    config: Annotated[Path, typer.Option("--config", help="Gateway config file (YAML).")],
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name in the group (default: host-pid).")
    ] = None,
    reclaim_idle_seconds: Annotated[
        float | None,
        typer.Option(help="Take over lines idle this long (default: 2x flush window, >= 60s)."),
    ] = None,
    sweep_seconds: Annotated[float, typer.Option(help="Reclaim/finalize interval.")] = 1.0,
) -> None:
    """Run lines from the batch queue: provider batch jobs or bounded direct calls."""
    import asyncio

    from thrifty_core.config import load_config
    from thrifty_core.logging import setup_logging
    from thrifty_gateway.services.batching.main import run_worker
    from thrifty_gateway.services.batching.worker import worker_options

    cfg = load_config(config)
    if cfg.batch is None:
        raise typer.BadParameter("the config has no `batch` section", param_hint="--config")
    setup_logging(cfg.server.log_level, cfg.server.log_format)
    options = worker_options(
        cfg.batch,
        consumer or f"{socket.gethostname()}-{os.getpid()}",
        reclaim_idle_seconds,
        sweep_seconds,
    )
    asyncio.run(run_worker(cfg, options))
