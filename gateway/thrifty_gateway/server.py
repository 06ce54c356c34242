"""Run the gateway with uvicorn (uvloop + httptools), one or several worker processes."""

from __future__ import annotations

import math
import os
from pathlib import Path

from fastapi import FastAPI

from thrifty_core.config import GatewayConfig, parse_config, read_config_data
from thrifty_core.logging import setup_logging

CONFIG_ENV = "THRIFTY_GATEWAY_CONFIG"
WORKERS_ENV = "THRIFTY_GATEWAY_WORKERS"  # the --workers override, for the worker processes


# Requests in flight at a stop may run for their route's whole timeout, at least this long. The
# operator sizes a gateway pod's terminationGracePeriodSeconds by the same rule (plus its preStop
# sleep, DRAIN_SECONDS and the time to close the stores: thrifty_operator/builders/gateway.py).
GRACEFUL_MIN_SECONDS = 20


def graceful_shutdown_seconds(config: GatewayConfig) -> int:
    """How long uvicorn lets the requests in flight at a stop finish: the longest route timeout
    (a request or stream its route still allows is not cut), at least GRACEFUL_MIN_SECONDS."""
    longest = max((r.timeout_seconds for r in config.routes), default=0.0)
    return max(GRACEFUL_MIN_SECONDS, math.ceil(longest))


def _config(path: str | Path, workers: int | None) -> GatewayConfig:
    """The config file with the `--workers` override applied before validation, so that it is
    checked like a file that says so (several workers need shared stores)."""
    data = read_config_data(path)
    if workers is not None:
        data.setdefault("server", {})["workers"] = workers
    return parse_config(data)


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: reads the config path from THRIFTY_GATEWAY_CONFIG."""
    from .app import create_app

    workers = os.environ.get(WORKERS_ENV)
    config = _config(os.environ[CONFIG_ENV], int(workers) if workers else None)
    setup_logging(config.server.log_level, config.server.log_format)
    return create_app(config)


def serve(
    config_path: str | Path,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Load the config, set up logging and serve until interrupted."""
    import uvicorn

    config = _config(config_path, workers)
    setup_logging(config.server.log_level, config.server.log_format)
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    if workers is not None:
        os.environ[WORKERS_ENV] = str(workers)
    uvicorn.run(
        "thrifty_gateway.server:app_from_env",
        factory=True,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        workers=config.server.workers,
        loop="uvloop",
        http="httptools",
        access_log=config.server.access_log,
        log_config=None,
        lifespan="on",
        server_header=False,
        date_header=False,
        # Requests in flight at a stop get up to their route's timeout, then the lifespan
        # waits up to DRAIN_SECONDS (5 s) for their accounting: inside the grace period the
        # operator gives gateway pods. A request cut off here is billed by the provider but
        # never reaches the ledger.
        timeout_graceful_shutdown=graceful_shutdown_seconds(config),
    )
